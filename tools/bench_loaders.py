"""Side-by-side loader benchmark, reproducible from scratch:

    python tools/bench_loaders.py --out runs/bench

writes the sample dataset (realistic formats, max side 1024), packs it, runs `imaginet-shards bench`
for each backend in its own process (so that peak memory is per backend), prints a table with each
backend's speed-up over the per-file baseline, and writes all results to OUT/bench.json. The sample
and the shards are reused when OUT already holds them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imaginet_shards.cli_common import run_command, run_tool, write_json
from imaginet_shards.ops.pack import PackOptions, pack
from imaginet_shards.sample import SPLITS, SampleOptions, write_sample


def prepare(out: Path, count: int, max_side: int, workers: int, *, max_count: int = 2000,
            progress: bool = True) -> tuple[Path, Path, Path]:
    """(image root, annotation file of every split, shard directory) of the realistic-format sample
    under `out`, created when missing (shards of at most `max_count` samples). The benchmark tools
    all generate their data here."""
    root, annotations, shards = out / "sample", out / "all.txt", out / "shards"
    if not (root / "train.txt").exists():
        write_sample(root, SampleOptions(count=count, max_side=max_side, formats="realistic",
                                         workers=workers), progress=progress)
    if not annotations.exists():
        annotations.write_text("".join((root / f"{split}.txt").read_text() for split in SPLITS))
    if not (shards / "manifest.json").exists():
        pack(PackOptions(root=root, annotations=annotations, out=shards, workers=workers,
                         max_count=max_count, progress=progress))
    return root, annotations, shards


def bench(backend: str, root: Path, annotations: Path, shards: Path, args: argparse.Namespace
          ) -> dict:
    """One `imaginet-shards bench` run in a fresh process; its JSON result."""
    result = args.out / f"bench-{backend}.json"
    command = [sys.executable, "-m", "imaginet_shards", "bench", str(shards), "--backend", backend,
               "--preset", args.preset, "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--batches", str(args.batches),
               "--warmup", str(args.warmup), "--repeats", "1", "--stage", "full",
               "--json", str(result)]
    if backend == "files":
        command += ["--root", str(root), "--annotations", str(annotations)]
    run_command(command)
    return json.loads(result.read_text())["full"][0]


def table(results: list[dict]) -> str:
    """A text table of the results with speed-ups over the files baseline."""
    base = next((r for r in results if r["backend"] == "files"), None)
    lines = ["backend  images/s  speed-up  CPU ms/img  CPU speed-up   MB/s  peak RSS MB  peak PSS MB"]
    for r in results:
        speed = f"{r['images_per_sec'] / base['images_per_sec']:.2f}x" if base else "-"
        cpu = f"{base['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}x" if base else "-"
        lines.append(f"{r['backend']:<7} {r['images_per_sec']:9.1f} {speed:>9} "
                     f"{r['cpu_ms_per_image']:11.1f} {cpu:>13} {r['mb_per_sec']:6.1f} "
                     f"{r['peak_rss_mb']:12.0f} {r['peak_pss_mb']:12.0f}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"),
                        help="Folder for the sample, the shards and the results.")
    parser.add_argument("--count", type=int, default=400, help="Sample images to generate.")
    parser.add_argument("--max-side", type=int, default=1024, help="Scale of the sample's image sizes.")
    parser.add_argument("--backends", default="files,cpu,dali",
                        help="Comma-separated backends (files, cpu, dali).")
    parser.add_argument("--preset", default="train", help="Perturbation preset.")
    parser.add_argument("--batch-size", type=int, default=64, help="Samples per batch.")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads or DataLoader workers.")
    parser.add_argument("--batches", type=int, default=30, help="Batches timed.")
    parser.add_argument("--warmup", type=int, default=3, help="Batches drawn before timing.")
    parser.add_argument("--workers", type=int, default=2, help="Processes for sample and pack.")
    return parser


def main(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    root, annotations, shards = prepare(args.out, args.count, args.max_side, args.workers)
    results = [bench(b, root, annotations, shards, args) for b in args.backends.split(",")]
    print(table(results))
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}
    write_json(args.out / "bench.json", summary)


if __name__ == "__main__":
    run_tool(parser(), main)
