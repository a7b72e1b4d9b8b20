"""DALI GPU check: the DALI backend on a GPU against the same backend on the CPU, on a machine with
one NVIDIA GPU, torch and DALI. From the repository root:

    PYTHONPATH=. python tools/gpu_dali_check.py --out gpu_dali.json

generates a small shard set (the embedded sample dataset at realistic formats, packed), then runs
the `train`, `eval` and `calibration` presets (without normalisation, so differences read in 0-255
levels) through `make_loader(..., backend="dali")` on `cuda:0` and on `cpu` with the same seed,
and checks: (1) per-sample decisions identical on both devices (both execute the values drawn on
the host), (2) the mean absolute pixel difference per preset within its limit, (3) the hand-off to torch under a
concurrent torch workload: `eval` batches consumed on torch's stream, without host
synchronisation, while matmuls run on another stream, equal those of a run synchronised after
every batch. Prints images/s and CPU ms/image for each preset and device. Exit status: 0 all
passed, 1 with the reasons when CUDA is present but something does not work or a check fails,
2 without CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imaginet_shards.cli_common import EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS, run_tool, write_json

PRESETS = ("train", "eval", "calibration")
# mean |GPU - CPU| in 0-255 levels, decisions identical: eval differs only by nvJPEG vs libjpeg-turbo
# on JPEGs (0.68 levels on JPEG-only 96-px windows on an H200, tools/gpu_jpeg_crops.py);
# train/calibration add the CUDA JPEG distortion (noise fields are the host's, as on the CPU)
LIMITS = {"eval": 1.0, "train": 3.0, "calibration": 3.0}
Decisions = dict[str, dict[str, float]]  # key -> decision name -> value


def mean_abs_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Mean |a - b| over the keys of both (images as arrays of the same shape); ValueError when
    the key sets differ (the two runs did not see the same samples)."""
    if set(a) != set(b):
        raise ValueError(f"the runs saw different samples: {len(set(a) ^ set(b))} keys differ")
    return float(np.mean([np.abs(a[k].astype(np.float64) - b[k]).mean() for k in sorted(a)]))


def compare_decisions(cpu: Decisions, gpu: Decisions) -> dict[str, Any]:
    """Whether both devices executed the same values for every sample, and for how many they
    differ."""
    differing = sum(cpu.get(k) != gpu.get(k) for k in set(cpu) | set(gpu))
    return {"identical": differing == 0, "samples_differing": differing}


def problems(result: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """What failed in a result (empty: all passed)."""
    found = []
    for name, preset in result.get("presets", {}).items():
        decisions = preset["decisions"]
        if not decisions["identical"]:
            found.append(f"{name}: GPU and CPU executed other decisions for "
                         f"{decisions['samples_differing']} samples")
        difference = preset.get("mean_abs_difference")
        if difference is not None and difference > limits[name]:
            found.append(f"{name}: mean |GPU - CPU| {difference:.3f} levels > {limits[name]}")
    handoff = result.get("handoff")
    if handoff is not None and handoff["mismatched_batches"]:
        found.append(f"hand-off: {handoff['mismatched_batches']} of {handoff['batches']} batches "
                     "consumed under a concurrent workload differ from the synchronised run")
    return found


def report(result: dict[str, Any]) -> str:
    """A few human-readable lines of a result."""
    lines = []
    for name, preset in result.get("presets", {}).items():
        speed = ", ".join(f"{device} {s['images_per_sec']} images/s {s['cpu_ms_per_image']} CPU ms"
                          for device, s in preset["speed"].items())
        difference = preset.get("mean_abs_difference")
        shown = "n/a (draws differ)" if difference is None else f"{difference:.3f} levels"
        lines.append(f"{name}: mean |GPU - CPU| {shown}; decisions {preset['decisions']}; {speed}")
    if "handoff" in result:
        lines.append(f"hand-off under a concurrent workload: {result['handoff']}")
    return "\n".join(lines)


# -- GPU parts ------------------------------------------------------------------------------------

def make_shards(folder: Path, count: int, max_side: int, workers: int) -> Path:
    """The sample dataset (realistic formats) packed into `folder`/shards."""
    from bench_loaders import prepare  # tools/ is on the path when this runs as a script

    return prepare(folder, count, max_side, workers, progress=False)[2]


def batches(shards: Path, preset: str, device: str, args: argparse.Namespace) -> Iterator[Any]:
    """One epoch of DALI batches (with keys and decisions) of `preset` without normalisation."""
    from imaginet_shards.augment.spec import get_preset
    from imaginet_shards.loaders import make_loader

    loader = make_loader(shards, backend="dali", preset=replace(get_preset(preset), normalize=False),
                         batch_size=args.batch, rank=0, world_size=1, seed=args.seed,
                         device=device, workers=args.workers, drop_last=False)
    try:
        yield from loader.batches()  # type: ignore[attr-defined]
    finally:
        loader.close()


def collect(shards: Path, preset: str, device: str, args: argparse.Namespace
            ) -> tuple[dict[str, np.ndarray], Decisions, dict[str, float]]:
    """(images by key in levels, decisions by key, speed) of one epoch on `device`."""
    images: dict[str, np.ndarray] = {}
    decisions: Decisions = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches(shards, preset, device, args):
        levels = (batch.images.float() * 255).round().to(torch.uint8).cpu().numpy()
        for i, key in enumerate(batch.keys):
            images[key] = levels[i]
            decisions[key] = {n: float(v[i]) for n, v in batch.decisions.items()}
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images, decisions, {"images_per_sec": round(len(images) / wall, 1),
                               "cpu_ms_per_image": round(1000 * cpu / len(images), 2)}


def handoff(shards: Path, args: argparse.Namespace) -> dict[str, int]:
    """`eval` on cuda:0 consumed on torch's current stream, without host synchronisation, while
    matmuls run on another stream, against a run synchronised after every batch."""
    reference = []
    for batch in batches(shards, "eval", "cuda:0", args):
        torch.cuda.synchronize()
        reference.append(batch.images.cpu())
    side, matrix = torch.cuda.Stream(), torch.randn(2048, 2048, device="cuda:0")
    copies = []
    for batch in batches(shards, "eval", "cuda:0", args):
        with torch.cuda.stream(side):  # keeps the GPU busy while DALI hands batches over
            for _ in range(8):
                matrix = (matrix @ matrix).tanh()
        copies.append(batch.images.clone())  # on the current stream, no host synchronisation
    torch.cuda.synchronize()
    mismatched = sum(c.shape != r.shape or not torch.equal(c.cpu(), r)
                     for c, r in zip(copies, reference)) + abs(len(copies) - len(reference))
    return {"batches": len(reference), "mismatched_batches": int(mismatched)}


def run_checks(shards: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "presets": {}}
    for preset in args.presets:
        gpu_images, gpu_decisions, gpu_speed = collect(shards, preset, "cuda:0", args)
        cpu_images, cpu_decisions, cpu_speed = collect(shards, preset, "cpu", args)
        decisions = compare_decisions(cpu_decisions, gpu_decisions)
        difference = (mean_abs_difference(gpu_images, cpu_images) if decisions["identical"]
                      else None)
        result["presets"][preset] = {"samples": len(gpu_images), "decisions": decisions,
                                     "mean_abs_difference": difference,
                                     "speed": {"cuda": gpu_speed, "cpu": cpu_speed}}
    result["handoff"] = handoff(shards, args)
    return result


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_dali_check.json",
                        help="JSON file for the results ('-': stdout only).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Folder for the generated shard set (default: a temporary one).")
    parser.add_argument("--images", type=int, default=200, help="Images in the generated set.")
    parser.add_argument("--max-side", type=int, default=512, help="Longest side of those images.")
    parser.add_argument("--batch", type=int, default=32, help="Batch size.")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 2, 8),
                        help="DALI decoder threads (the loader's `workers`).")
    parser.add_argument("--seed", type=int, default=0, help="Loader seed (both devices).")
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS),
                        help="Presets to compare.")
    return parser


def main(args: argparse.Namespace, checks: Callable[[Path, argparse.Namespace], dict] = run_checks
         ) -> int:
    if not torch.cuda.is_available():
        print("Error: no CUDA here (no NVIDIA GPU or driver visible to torch "
              f"{torch.__version__}); run gpu_dali_check on a machine with one.", file=sys.stderr)
        return EXIT_ERROR
    with tempfile.TemporaryDirectory(prefix="imaginet-gpu-dali-") as scratch:
        folder = args.work or Path(scratch)
        try:
            shards = folder / "shards"
            if not (shards / "manifest.json").exists():
                shards = make_shards(folder, args.images, args.max_side, args.workers)
            result = checks(shards, args)
        except Exception as exc:  # CUDA is here: anything that breaks is a failure, never a skip
            traceback.print_exc()
            print(f"FAILED: the DALI GPU check could not complete: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return EXIT_PROBLEMS
    found = problems(result, LIMITS)
    result["problems"] = found
    write_json(args.out, result)
    print(report(result))
    for problem in found:
        print(f"FAILED: {problem}", file=sys.stderr)
    return EXIT_PROBLEMS if found else EXIT_OK


if __name__ == "__main__":
    run_tool(parser(), main)
