"""Tiny test datasets: images whose flat colour encodes their labels, an annotation file, shards.

Backend-neutral helpers for any loader test:

- `build_shards(dest, count, ...)` writes images + annotations under `dest/src` and packs them into
  `dest/shards` (returns that directory);
- `rewrite_shard(path, edit)` rewrites one shard (tar and index) sample by sample, to inject faults;
- `label_colour(labels)` is the RGB colour an image with those labels is painted in, and
  `labels_from_images(images, mean, std)` reads labels back from normalised batches: the colour is
  flat, so it survives crops, flips, rotations, blur, noise, resizing and lossy compression.
"""
from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imaginet_shards.format.annotations import GENERATOR_FAMILY, REAL_FAMILY, REAL_GENERATOR, format_line
from imaginet_shards.format.tar import ShardWriter, split_member_name
from imaginet_shards.loaders.factory import make_loader
from imaginet_shards.ops.pack import PackOptions, pack

# Labels are fixed by (content, generator): origin and family follow from the generator.
CONTENT_LEVELS = (20, 70, 120, 170)  # red channel
GENERATOR_LEVELS = tuple(20 + 26 * g for g in range(9))  # green channel
BLUE = 128
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def labels_for(content: int, generator: int) -> tuple[int, int, int, int]:
    """A valid (origin, content, family, generator) row."""
    if generator == REAL_GENERATOR:
        return 0, content, REAL_FAMILY, REAL_GENERATOR
    return 1, content, GENERATOR_FAMILY[generator], generator


def label_colour(labels: Sequence[int]) -> tuple[int, int, int]:
    return CONTENT_LEVELS[labels[1]], GENERATOR_LEVELS[labels[3]], BLUE


def labels_from_colour(rgb: Sequence[float]) -> tuple[int, int, int, int]:
    content = int(np.argmin([abs(rgb[0] - v) for v in CONTENT_LEVELS]))
    generator = int(np.argmin([abs(rgb[1] - v) for v in GENERATOR_LEVELS]))
    return labels_for(content, generator)


def labels_from_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                       ) -> torch.Tensor:
    """int64 [N, 4] labels decoded from normalised float images [N, 3, H, W] (mean colour)."""
    pixels = images.float().cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    rgb = (pixels * 255).mean(dim=(2, 3))
    rows = [labels_from_colour(row.tolist()) for row in rgb]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)


def write_images(root: Path, count: int, *, formats: Sequence[str] = ("jpg", "png", "webp"),
                 sizes: tuple[int, int] = (256, 320), seed: int = 0) -> Path:
    """`count` flat-colour images (random labels, formats cycled, sides in [sizes]) under `root`,
    and their annotation file `root/annotations.txt` (returned)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        labels = labels_for(int(rng.integers(4)), int(rng.integers(9)))
        fmt = formats[i % len(formats)]
        width, height = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        relative = f"img/{i:05d}.{fmt}"
        (root / "img").mkdir(exist_ok=True)
        Image.new("RGB", (width, height), label_colour(labels)).save(root / relative, PIL_FORMATS[fmt])
        lines.append(format_line(relative, labels))
    annotations = root / "annotations.txt"
    annotations.write_text("\n".join(lines) + "\n")
    return annotations


def build_shards(dest: Path, count: int, *, max_count: int = 7, seed: int = 0,
                 formats: Sequence[str] = ("jpg", "png", "webp"),
                 sizes: tuple[int, int] = (256, 320)) -> Path:
    """Write `count` images under dest/src and pack them into dest/shards (max_count per shard)."""
    annotations = write_images(dest / "src", count, formats=formats, sizes=sizes, seed=seed)
    out = dest / "shards"
    pack(PackOptions(root=dest / "src", annotations=annotations, out=out, max_count=max_count,
                     seed=seed, workers=1, progress=False))
    return out


Members = list[tuple[str, bytes]]


def rewrite_shard(tar_path: Path, edit: Callable[[str, Members], Members]) -> None:
    """Rewrite a shard and its .idx, passing each sample's (key, [(ext, payload), ...]) through
    `edit` (which returns the members to write). The manifest is left untouched."""
    with tarfile.open(tar_path) as archive:
        members = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]
    with open(tar_path, "wb") as stream:
        writer = ShardWriter(stream)
        for key, group in groupby(members, key=lambda m: split_member_name(m[0])[0]):
            writer.add_sample(key, edit(key, [(split_member_name(n)[1], d) for n, d in group]))
        _, _, index = writer.close()
    tar_path.with_suffix(".idx").write_text(index)


def pack_arrays(dest: Path, arrays: Sequence[tuple[np.ndarray | Image.Image, str]], *,
                max_count: int = 7) -> Path:
    """Save HWC uint8 `arrays` (or Pillow images: grey, CMYK), each in its format ("jpg", "png" or
    "webp"; lossy ones at quality 90) with cycling labels, and pack them into dest/shards (returned)."""
    root = dest / "src"
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (array, fmt) in enumerate(arrays):
        relative = f"img/{i:05d}.{fmt}"
        options = {"quality": 90} if fmt in ("jpg", "webp") else {}
        image = array if isinstance(array, Image.Image) else Image.fromarray(array)
        image.save(root / relative, PIL_FORMATS[fmt], **options)
        lines.append(format_line(relative, labels_for(i % 4, i % 9)))
    annotations = root / "annotations.txt"
    annotations.write_text("\n".join(lines) + "\n")
    pack(PackOptions(root=root, annotations=annotations, out=dest / "shards", max_count=max_count,
                     workers=1, progress=False))
    return dest / "shards"


def epoch_batches(path: Path, backend: str, preset: str, seed: int = 5, epoch: int = 1
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (images, labels) batch of one epoch of the shard set at `path` (batch 6, one worker,
    on the CPU): what tests compare across layouts and backends."""
    loader = make_loader(path, backend=backend, preset=preset, batch_size=6, rank=0,
                         world_size=1, seed=seed, workers=1, device="cpu")
    loader.set_epoch(epoch)
    try:
        return [(images.clone(), labels.clone()) for images, labels in loader]
    finally:
        loader.close()
