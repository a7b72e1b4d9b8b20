"""Robustness sweeps as the ImagiNet authors run them, on the decoded source images of a shard set.

- `jpeg` q: the `size` centre crop (reflect-padded when the image is smaller), JPEG-encoded at
  quality q and decoded;
- `resize` i: the centre crop of side int(size * 12 / i) (reflect-padded when needed), resized to
  `size` with Lanczos: the image at scale 12 / i (i = 12 is the plain crop).

Every image is decoded once and turned into all conditions' `size`x`size` crops, which are scored
batch by batch. OpenCV is used when it is importable (Lanczos-4 and its JPEG codec, as the authors'
albumentations pipeline); otherwise PIL's Lanczos (a 3-lobe kernel, antialiased when shrinking,
where OpenCV's 4-lobe kernel is not) and PIL's JPEG codec (libjpeg, same quality scale).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import cv2
import numpy as np
import torch
from tqdm import tqdm

from imaginet_shards.augment.cpu import decode
from imaginet_shards.io.shardset import Record, load_index, open_shard_set, read_samples

from .engine import Runtime
from .linear import Detector
from .reports import Predictions

RESIZE_NUMERATOR = 12  # resize step i crops int(size * 12 / i)
JPEG_QUALITIES: tuple[int, ...] = tuple(range(40, 101, 5))
RESIZE_DIVISORS: tuple[int, ...] = tuple(range(2, 13))


@dataclass(frozen=True)
class Condition:
    """A sweep point: `jpeg` at quality `value`, or `resize` with divisor `value` (scale 12 / value)."""

    sweep: Literal["jpeg", "resize"]
    value: int

    @property
    def x(self) -> float:
        """The plot's x value: the JPEG quality, or the scale 12 / i."""
        return float(self.value) if self.sweep == "jpeg" else RESIZE_NUMERATOR / self.value

    def apply(self, image: np.ndarray, size: int) -> np.ndarray:
        """The condition on an HWC uint8 RGB image; returns `size`x`size`x3 uint8."""
        if self.sweep == "jpeg":
            return jpeg(centre_crop(image, size), self.value)
        side = int(size * (RESIZE_NUMERATOR / self.value))
        return lanczos(centre_crop(image, side), size)


def conditions(jpeg_qualities: Sequence[int], resize_divisors: Sequence[int]) -> tuple[Condition, ...]:
    return (tuple(Condition("jpeg", q) for q in jpeg_qualities)
            + tuple(Condition("resize", i) for i in resize_divisors))


def centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The centred `side`x`side` crop, reflect-padded (edge pixel not repeated) around the image
    first where it is smaller (albumentations' PadIfNeeded + CenterCrop)."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, side - height), max(0, side - width)
    if pad_h or pad_w:
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                       mode="reflect" if min(height, width) > 1 else "edge")
        height, width = image.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to `size`x`size` with OpenCV's Lanczos-4 (no antialiasing), as the authors do."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LANCZOS4)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip at `quality` through OpenCV's codec (RGB converted to BGR and back)."""
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode a {image.shape} image")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("OpenCV could not decode its own JPEG")
    return decoded[:, :, ::-1]


def _variants(record: Record, sweep: Sequence[Condition], size: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(key, labels, uint8 [C, 3, size, size]) of one sample; an unusable sample raises, naming it."""
    if record.error or record.labels is None:
        raise ValueError(f"{record.shard}: sample {record.key}: {record.error or 'no labels'}")
    try:
        image = decode(record.image).permute(1, 2, 0).numpy()
    except ValueError as exc:
        raise ValueError(f"{record.shard}: sample {record.key}: {exc}") from None
    crops = np.stack([c.apply(image, size) for c in sweep]).transpose(0, 3, 1, 2)
    return record.key, record.labels, crops


def _records(data: str) -> Iterator[Record]:
    shards = open_shard_set(data)
    for entry in shards.manifest.shards:
        yield from read_samples(shards, load_index(shards, entry), 0, entry.samples)


@torch.no_grad()
def sweep_predictions(detector: Detector, data: str, sweep: Sequence[Condition], *, runtime: Runtime,
                      size: int, mean: Sequence[float], std: Sequence[float], batch_size: int,
                      workers: int, progress: bool = False) -> dict[Condition, Predictions]:
    """Score every image of the shard set `data` under every condition (the detector in eval mode)."""
    detector.eval()
    if not sweep:
        return {}
    shift = torch.tensor(mean, device=runtime.device).view(1, 3, 1, 1) * 255
    scale = torch.tensor(std, device=runtime.device).view(1, 3, 1, 1) * 255
    keys: list[str] = []
    labels: list[np.ndarray] = []
    logits: dict[Condition, list[np.ndarray]] = {c: [] for c in sweep}
    probabilities: dict[Condition, list[np.ndarray]] = {c: [] for c in sweep}
    records = _records(data)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(desc="sweeps", unit="image", disable=not progress, leave=False)
        while chunk := list(islice(records, batch_size)):  # a batch at a time: bounded memory
            batch = list(pool.map(lambda r: _variants(r, sweep, size), chunk))
            keys += [key for key, _, _ in batch]
            labels.append(np.stack([item_labels for _, item_labels, _ in batch]))
            crops = torch.from_numpy(np.stack([c for _, _, c in batch])).to(runtime.device)
            for i, condition in enumerate(sweep):
                images = runtime.prepare_images((crops[:, i].float() - shift) / scale)
                with runtime.autocast():
                    origin, family = detector(images)
                logits[condition].append(origin.float().cpu().numpy())
                probabilities[condition].append(torch.softmax(family.float(), dim=1).cpu().numpy())
            bar.update(len(batch))
        bar.close()
    if not keys:
        raise ValueError(f"{data}: no image to sweep")
    stacked = np.concatenate(labels)
    return {c: Predictions(tuple(keys), stacked, np.concatenate(logits[c]), np.concatenate(probabilities[c]))
            for c in sweep}
