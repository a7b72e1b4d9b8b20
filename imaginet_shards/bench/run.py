"""Loader throughput: images/s, MB/s of compressed input and peak memory of one
backend over a fixed number of batches after a warm-up.

Backends: `dali` and `cpu` read a shard set through `make_loader`; `files` is the per-file baseline
(`files_baseline`: PIL opens each image file, the reference implementation's design). All three run
the same preset with `threads` DALI threads or DataLoader workers. Epochs follow each other
(`set_epoch`) until `warmup + batches` batches have been drawn, so per-epoch costs (worker or
pipeline start) are part of the figure. Peak memory and CPU time sum this process and its children
(workers), less what sampling the memory costs (`resources.PeakMemory`); CPU ms per image is the
cost on a machine shared with other work, where images/s is noisy. `repeats` windows of `batches`
batches each are timed: images/s and MB/s are medians over the windows (each should span several
batches per worker: workers deliver in bursts), CPU time and memory cover them all. `bench_matrix`
runs a grid of these next to the tar-read and decode-only stages (`bench.stages`).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.bench.resources import PeakMemory

BenchBackend = Literal["dali", "cpu", "files"]
BACKENDS: tuple[BenchBackend, ...] = ("dali", "cpu", "files")


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run. `shards` for dali/cpu; `root` and `annotations` for files."""

    backend: BenchBackend
    shards: str | None = None
    root: Path | None = None
    annotations: Path | None = None
    preset: str = "train"
    batch_size: int = 64
    threads: int = 2
    batches: int = 30
    warmup: int = 3
    seed: int = 0
    crop: int | None = None
    device: str = "cpu"
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "files" and (self.root is None or self.annotations is None):
            raise ValueError("the files backend needs --root and --annotations")
        if self.backend != "files" and not self.shards:
            raise ValueError(f"the {self.backend} backend needs a shard set (SHARDS)")
        if (self.batches < 1 or self.warmup < 0 or self.batch_size < 1 or self.threads < 1
                or self.repeats < 1 or (self.crop is not None and self.crop < 1)):
            raise ValueError(f"need batches >= 1, warmup >= 0, batch_size >= 1, threads >= 1, "
                             f"repeats >= 1, crop >= 1; got batches={self.batches} "
                             f"warmup={self.warmup} batch_size={self.batch_size} "
                             f"threads={self.threads} repeats={self.repeats} crop={self.crop}")

    def resolved_preset(self) -> Preset:
        """The preset with `crop` applied (the `train` preset's crop, the output size of the
        others)."""
        if self.crop is None:
            return get_preset(self.preset)
        return get_preset(self.preset, **{"crop" if self.preset == "train" else "size": self.crop})


@dataclass(frozen=True)
class BenchResult:
    """What `run_bench` measured (`record` keys are the field names)."""

    backend: str
    preset: str
    crop: int
    device: str
    batch_size: int
    threads: int
    batches: int
    warmup: int
    repeats: int
    images: int
    seconds: float
    images_per_sec: float
    images_per_sec_runs: tuple[float, ...]
    mb_per_sec: float
    input_bytes_per_image: float
    startup_seconds: float
    cpu_ms_per_image: float
    cpu_utilisation: float
    peak_rss_mb: float
    peak_pss_mb: float

    def record(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.backend:>5} {self.preset} {self.crop}px {self.device}: "
                f"{self.images_per_sec:8.1f} images/s {self.mb_per_sec:7.1f} MB/s "
                f"{self.cpu_ms_per_image:6.1f} CPU ms/image ({self.cpu_utilisation:.2f} cores)  "
                f"peak RSS {self.peak_rss_mb:7.0f} MB "
                f"(PSS {self.peak_pss_mb:.0f} MB)  [{self.images} images in {self.seconds:.1f} s "
                f"after {self.warmup} warm-up batches, batch {self.batch_size}, "
                f"{self.threads} threads, first batch after {self.startup_seconds:.1f} s]")


def _epochs(loader, set_epoch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of consecutive epochs, endlessly."""
    epoch = 0
    while True:
        set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yields no batch (dataset smaller than one batch?)")
        epoch += 1


def open_stream(options: BenchOptions) -> tuple[Iterable, float]:
    """(endless batch stream, compressed input bytes per image) for the chosen backend."""
    if options.backend == "files":
        from imaginet_shards.bench.files_baseline import FileDataset, file_loader

        if options.root is None or options.annotations is None:
            raise ValueError("the files backend needs --root and --annotations")
        dataset = FileDataset(options.root, options.annotations, options.resolved_preset())
        files = file_loader(dataset, options.batch_size, options.threads, options.seed)
        return _epochs(files, lambda epoch: None), dataset.input_bytes() / len(dataset)
    from imaginet_shards.io.shardset import open_shard_set
    from imaginet_shards.loaders import make_loader

    if options.shards is None or options.backend == "files":
        raise ValueError(f"the {options.backend} backend needs a shard set (SHARDS)")
    loader = make_loader(options.shards, backend=options.backend, preset=options.resolved_preset(),
                         batch_size=options.batch_size, rank=0, world_size=1, seed=options.seed,
                         workers=options.threads, device=options.device)
    manifest = open_shard_set(options.shards).manifest
    per_image = sum(s.bytes for s in manifest.shards) / max(manifest.samples, 1)
    return _epochs(loader, loader.set_epoch), per_image


def run_bench(options: BenchOptions) -> BenchResult:
    """Draw `warmup` batches, then time `repeats` windows of `batches` batches each (moved to
    `device`, a no-op for loaders that already deliver there)."""
    torch.manual_seed(options.seed)
    with PeakMemory() as memory:
        start = time.perf_counter()
        stream, per_image = open_stream(options)
        stream = iter(stream)
        next(stream)
        startup = time.perf_counter() - start
        for _ in range(max(options.warmup - 1, 0)):
            next(stream)
        rates, images, seconds = [], 0, 0.0
        cpu = memory.tree_cpu_seconds()
        for _ in range(options.repeats):
            count, begin = 0, time.perf_counter()
            for _ in range(options.batches):
                count += len(next(stream)[0].to(options.device))
            elapsed = time.perf_counter() - begin
            rates.append(count / elapsed)
            images, seconds = images + count, seconds + elapsed
        cpu = memory.tree_cpu_seconds() - cpu
    rate = statistics.median(rates)
    return BenchResult(options.backend, options.preset, options.resolved_preset().size,
                       options.device, options.batch_size, options.threads, options.batches,
                       options.warmup, options.repeats, images, round(seconds, 3), round(rate, 2),
                       tuple(round(r, 2) for r in rates), round(rate * per_image / 1e6, 2),
                       round(per_image, 1), round(startup, 3), round(cpu * 1000 / images, 2),
                       round(cpu / seconds, 2), round(memory.rss / 2**20, 1),
                       round(memory.pss / 2**20, 1))
