"""Tiny image trees in the ImagiNet layout, with their annotation files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# (folder, extension, PIL format, labels)
SOURCES = [
    ("imagenet", "JPEG", "JPEG", (0, 0, 4, 8)),
    ("ffhq", "png", "PNG", (0, 2, 4, 8)),
    ("progan_val", "png", "PNG", (1, 0, 0, 0)),
    ("sdxl_photos_fake", "webp", "WEBP", (1, 0, 1, 4)),
    ("journeydb", "jpg", "JPEG", (1, 3, 2, 6)),
    ("dalle3", "png", "PNG", (1, 3, 3, 7)),
]


def textured(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth gradients plus noise: every pixel differs, and PNG filters have work to do."""
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) % 256], axis=2)
    return (base + rng.integers(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def make_dataset(root: Path, count: int, seed: int = 0, side: int = 48) -> Path:
    """Write `count` small images cycling through SOURCES under root and an annotation file;
    returns the annotation file's path."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        folder, ext, fmt, labels = SOURCES[i % len(SOURCES)]
        height, width = side + int(rng.integers(0, side)), side + int(rng.integers(0, side))
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = root / folder / f"img{i:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(array, fmt))
        lines.append(f"./{folder}/{path.name}," + ",".join(map(str, labels)))
    annotations = root.parent / f"{root.name}.txt"
    annotations.write_text("\n".join(lines) + "\n")
    return annotations
