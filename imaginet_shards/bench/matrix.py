"""The bench matrix: backends x devices x threads x presets x crop sizes, with the tar-read and
decode-only stages (`stages`) next to the full pipelines (`run`), an optional model-in-the-loop
diagnosis (`model`, with a training step the caller supplies), machine information and package
versions, as one JSON-able dict.

Backends run one after the other, DALI last (its threads must not be running when DataLoader
workers fork).
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import torch

from imaginet_shards.bench.model import StepFactory, run_model_bench
from imaginet_shards.bench.run import BACKENDS, BenchBackend, BenchOptions, run_bench
from imaginet_shards.bench.stages import decode_only, format_counts, read_images, tar_read

STAGES = ("tar", "decode", "full")
PACKAGES = ("torch", "torchvision", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "webdataset",
            "numpy", "pillow", "numba", "zlib-ng", "zstandard", "webp", "nvidia-nvimgcodec-cu12")


@dataclass(frozen=True)
class MatrixOptions:
    """A grid of bench runs; `base` holds everything but the swept axes (its own backend, threads,
    preset, crop and device are ignored). `decode_images`: at most this many images per format
    for decode-only."""

    base: BenchOptions
    backends: tuple[BenchBackend, ...] = BACKENDS
    threads: tuple[int, ...] = (2,)
    presets: tuple[str, ...] = ("train",)
    crops: tuple[int | None, ...] = (None,)
    devices: tuple[str, ...] = ("cpu",)
    stages: tuple[str, ...] = STAGES
    decode_images: int = 64
    model: str | None = None
    model_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("backends", "threads", "presets", "crops", "devices", "stages"):
            if not getattr(self, name):
                raise ValueError(f"the matrix needs at least one value of {name}")
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
        for device in self.devices:
            if torch.device(device).type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if self.decode_images < 1 or self.model_steps < 1:
            raise ValueError(f"need decode_images >= 1 and model_steps >= 1, got "
                             f"{self.decode_images} and {self.model_steps}")
        if self.model is not None and "full" not in self.stages:
            raise ValueError("--model needs the full stage (its thread advice comes from it)")
        for backend in self.backends:  # validates each backend's needs before anything runs
            replace(self.base, backend=backend)

    def cells(self, backend: BenchBackend) -> list[BenchOptions]:
        """The full-pipeline runs of one backend."""
        return [replace(self.base, backend=backend, device=d, preset=p, crop=c, threads=t)
                for d in self.devices for p in self.presets for c in self.crops
                for t in self.threads]


def machine_info() -> dict:
    """CPU model, cores (all and usable), RAM, GPU (if any), OS and Python."""
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    ram = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        ram = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0]) * 1024
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "ram_gb": round(ram / 1e9, 1), "gpus": gpus, "os": platform.platform(),
            "python": platform.python_version(), "load_average": list(os.getloadavg())}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the figures (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _settings(options: MatrixOptions) -> dict:
    base = options.base
    return {"shards": base.shards, "batch_size": base.batch_size, "batches": base.batches,
            "warmup": base.warmup, "repeats": base.repeats, "decode_images": options.decode_images,
            "backends": list(options.backends), "threads": list(options.threads),
            "presets": list(options.presets), "crops": list(options.crops),
            "devices": list(options.devices), "stages": list(options.stages),
            "model": options.model}


def run_matrix(options: MatrixOptions, log: Callable[[str], None] = print,
               make_step: StepFactory | None = None) -> dict:
    """Run the matrix; `log` gets one line per finished run; `make_step(arch, device)` builds the
    training step of the model-in-the-loop diagnosis (needed when `options.model` is set)."""
    if options.model is not None and make_step is None:
        raise ValueError("the model-in-the-loop diagnosis needs the trainer: run "
                         "`imaginet-train bench --model ARCH`")
    shards, repeats = options.base.shards, options.base.repeats
    if shards is None:
        raise ValueError("the bench matrix needs a shard set (SHARDS)")
    report: dict = {"machine": machine_info(), "packages": package_versions(),
                    "settings": _settings(options), "formats": format_counts(shards),
                    "tar_read": None, "decode": [], "full": [], "model": []}
    if "tar" in options.stages:
        tar = tar_read(shards, repeats)
        report["tar_read"] = tar.record()
        log(f"tar read: {tar.images_per_sec:.0f} images/s, {tar.mb_per_sec:.0f} MB/s")
    images = read_images(shards, options.decode_images) if "decode" in options.stages else {}
    for backend in sorted(options.backends, key=lambda b: b == "dali"):
        for fmt, blobs in images.items():
            if backend == "dali" and fmt == "tiles":  # only windows.py reads them, in DALI too
                continue
            for threads in options.threads:
                result = decode_only(backend, fmt, blobs, threads, repeats, options.devices[0])
                report["decode"].append(result.record())
                log(f"decode {backend:>5} {fmt:>4} {threads} threads: "
                    f"{result.images_per_sec:8.1f} images/s "
                    f"{result.cpu_ms_per_image:6.1f} CPU ms/image")
        if "full" not in options.stages:
            continue
        results = [run_bench(cell) for cell in options.cells(backend)]
        for full in results:
            report["full"].append(full.record())
            log(full.summary())
        if options.model is not None and make_step is not None:
            cell = max(options.cells(backend)[:len(options.threads)], key=lambda c: c.threads)
            model = run_model_bench(cell, options.model, make_step, options.model_steps,
                                    results=results)
            report["model"].append(model.record())
            log(f"model {options.model}: {model.verdict}")
    return report
