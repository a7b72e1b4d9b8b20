"""The stages under a loader, timed alone: reading the tars (raw sample bytes
through `shardset.read_samples`, nothing decoded) and decoding (full-frame, per image format, with
each backend's decoder and parallelism: PIL in DataLoader workers for `files`, the CPU backend's
`augment.cpu.decode` in DataLoader workers for `cpu` (`codecs.windows`, OpenCV for the rare images
outside its fast paths), the DALI loader's own decoder configuration on `threads` DALI threads for
`dali`).

Decode-only is the physical bound of a backend that decodes whole images; its full pipeline also
crops, perturbs, batches and normalises. Pipelines that start with a crop decode less than a whole
image (PNG/WebP windows in both backends, JPEG windows in the CPU backend, JPEG ROI in DALI), so
they can beat it.
Every stage makes one untimed pass first (page cache, worker and pipeline start), then `repeats`
timed passes; figures are medians over the passes.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset

from imaginet_shards.bench.resources import tree_cpu_seconds
from imaginet_shards.errors import SampleError
from imaginet_shards.format.images import IMAGE_MEMBERS
from imaginet_shards.io.shardset import load_index, open_shard_set, read_samples

DECODE_BATCH = 4  # small, so that workers share a few dozen images evenly


@dataclass(frozen=True)
class StageResult:
    """One stage's median over `repeats` passes of `images` images (`bytes` compressed)."""

    stage: str
    backend: str
    format: str
    threads: int
    images: int
    bytes: int
    repeats: int
    images_per_sec: float
    mb_per_sec: float
    cpu_ms_per_image: float
    cpu_utilisation: float

    def record(self) -> dict:
        return asdict(self)


def _timed(run_pass: Callable[[], None], stage: str, backend: str, fmt: str, threads: int,
           images: int, size: int, repeats: int) -> StageResult:
    """One warm-up pass, then `repeats` timed passes of `run_pass`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    run_pass()
    times, cpu = [], tree_cpu_seconds()
    for _ in range(repeats):
        begin = time.perf_counter()
        run_pass()
        times.append(time.perf_counter() - begin)
    cpu = tree_cpu_seconds() - cpu
    seconds = statistics.median(times)
    return StageResult(stage, backend, fmt, threads, images, size, repeats,
                       round(images / seconds, 2), round(size / seconds / 1e6, 2),
                       round(cpu * 1000 / (images * repeats), 2), round(cpu / sum(times), 2))


def read_images(shards: str, per_format: int) -> dict[str, list[bytes]]:
    """Image bytes of the shard set by format (extension): the first `per_format` of each in
    shard order."""
    shard_set = open_shard_set(shards)
    found: dict[str, list[bytes]] = {ext: [] for ext in IMAGE_MEMBERS}
    for entry in shard_set.manifest.shards:
        for record in read_samples(shard_set, load_index(shard_set, entry), 0, entry.samples):
            if record.error:
                raise SampleError(record.shard, record.key, record.error)
            if len(found[record.image_ext]) < per_format:
                found[record.image_ext].append(record.image)
    return {ext: blobs for ext, blobs in found.items() if blobs}


def format_counts(shards: str) -> dict[str, int]:
    """Images per format (extension) in the shard set, from the indexes alone."""
    shard_set = open_shard_set(shards)
    counts = dict.fromkeys(IMAGE_MEMBERS, 0)
    for entry in shard_set.manifest.shards:
        for sample in load_index(shard_set, entry).samples:
            for member in sample:
                if member.ext in counts:
                    counts[member.ext] += 1
    return {ext: n for ext, n in counts.items() if n}


def tar_read(shards: str, repeats: int = 3) -> StageResult:
    """Raw sample bytes of every shard, read in order on one thread."""
    shard_set = open_shard_set(shards)
    manifest = shard_set.manifest
    indexes = [load_index(shard_set, entry) for entry in manifest.shards]

    def run_pass() -> None:
        for entry, index in zip(manifest.shards, indexes):
            for record in read_samples(shard_set, index, 0, entry.samples):
                if record.error:
                    raise SampleError(record.shard, record.key, record.error)

    return _timed(run_pass, "tar_read", "-", "all", 1, manifest.samples,
                  sum(s.bytes for s in manifest.shards), repeats)


def _decode_pil(data: bytes) -> int:
    from io import BytesIO

    from PIL import Image
    with Image.open(BytesIO(data)) as image:
        return np.array(image.convert("RGB")).size


def _decode_cpu_backend(data: bytes) -> int:
    from imaginet_shards.augment.cpu import decode
    return decode(data).numel()


class _Decodes(Dataset):
    """Item i: decode blob i with `fn`, return its pixel count (so workers ship back no pixels)."""

    def __init__(self, blobs: list[bytes], fn: Callable[[bytes], int]):
        self.blobs, self.fn = blobs, fn

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> int:
        return self.fn(self.blobs[i])


def _worker_pass(blobs: list[bytes], fn: Callable[[bytes], int], threads: int
                 ) -> Callable[[], None]:
    loader = DataLoader(_Decodes(blobs, fn), batch_size=DECODE_BATCH, num_workers=threads,
                        persistent_workers=True, collate_fn=sum)

    def run_pass() -> None:
        for _ in loader:
            pass
    return run_pass


def _dali_pass(blobs: list[bytes], threads: int, device: str) -> Callable[[], None]:
    """Full-frame decoding through the DALI loader's own pipeline builder, executor and decoder
    arguments (those of the `train` preset; `loaders.dali_pipeline`), batches of DECODE_BATCH fed
    as the loader feeds them."""
    from imaginet_shards.augment.spec import get_preset
    from imaginet_shards.loaders.dali_pipeline import Feed, Runner, build_pipeline, decode_graph

    pipe, _ = build_pipeline(decode_graph(get_preset("train")), device, DECODE_BATCH, threads)
    runner = Runner(pipe)
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in blobs]
    labels = [np.zeros(4, dtype=np.int32)] * len(arrays)
    feeds = [Feed(arrays[i:i + DECODE_BATCH], labels[i:i + DECODE_BATCH],
                  len(arrays[i:i + DECODE_BATCH])) for i in range(0, len(arrays), DECODE_BATCH)]

    def run_pass() -> None:  # the last batch may be short: external_source allows that
        for _ in runner.run(feeds):
            pass
    return run_pass


def decode_only(backend: str, fmt: str, blobs: list[bytes], threads: int, repeats: int = 3,
                device: str = "cpu") -> StageResult:
    """Full-frame decode of `blobs` (all of format `fmt`) with `backend`'s decoder."""
    if not blobs:
        raise ValueError(f"no {fmt} images to decode")
    if backend == "dali":
        run_pass = _dali_pass(blobs, threads, device)
    elif backend in ("cpu", "files"):
        run_pass = _worker_pass(blobs, _decode_cpu_backend if backend == "cpu" else _decode_pil,
                                threads)
    else:
        raise ValueError(f"decode-only backend must be 'dali', 'cpu' or 'files', got {backend!r}")
    return _timed(run_pass, "decode", backend, fmt, threads, len(blobs),
                  sum(len(b) for b in blobs), repeats)
