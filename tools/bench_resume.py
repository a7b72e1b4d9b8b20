"""What a mid-epoch resume costs: time to the first batch of a loader resumed at 90 % of an epoch
against a fresh start, for each backend, reproducible from scratch:

    python tools/bench_resume.py --out runs/bench-resume

writes and packs the sample dataset (realistic formats, as `bench_loaders.py` does) unless OUT
already holds it, then, in this process and alternating fresh and resumed so that both see the
same warm caches, times
`make_loader(...)` + `load_state_dict(...)` + the first batch, and prints the medians and their
ratio (target: at most 1.5, as a resume should cost reading the index and nothing more).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_loaders import prepare
from imaginet_shards.cli_common import run_tool, write_json
from imaginet_shards.env import dali_installed
from imaginet_shards.loaders import make_loader


def first_batch_seconds(shards: Path, backend: str, args: argparse.Namespace, at: float) -> float:
    """Seconds from make_loader to the first batch, resumed at fraction `at` of the epoch (0: fresh)."""
    begin = time.perf_counter()
    loader = make_loader(shards, backend=backend, preset=args.preset, batch_size=args.batch_size,
                         workers=args.workers, seed=1, rank=0, world_size=1)
    if at > 0:
        state = loader.state_dict()
        state["legs"] = [[1, args.batch_size, int(at * len(loader))]]
        loader.load_state_dict(state)
    with loader:
        next(iter(loader))
        return time.perf_counter() - begin


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-resume"),
                        help="working directory (sample, shards, results)")
    parser.add_argument("--count", type=int, default=4000, help="sample images to generate")
    parser.add_argument("--max-side", type=int, default=512, help="largest image side")
    parser.add_argument("--backends", default="cpu,dali",
                        help="comma-separated backends (dali is skipped when not installed)")
    parser.add_argument("--preset", default="train", help="perturbation preset")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size")
    parser.add_argument("--workers", type=int, default=2, help="loader workers / DALI threads")
    parser.add_argument("--at", type=float, default=0.9, help="resume point, fraction of the epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each kind")
    parser.add_argument("--json", default=None, help="also write the figures here ('-' = stdout)")
    return parser


def main(args: argparse.Namespace) -> int:
    _, _, shards = prepare(args.out, args.count, args.max_side, args.workers)
    results = []
    for backend in args.backends.split(","):
        if backend == "dali" and not dali_installed():
            print("dali: not installed, skipped")
            continue
        first_batch_seconds(shards, backend, args, 0)  # warm-up: imports, page cache
        fresh, resumed = [], []
        for _ in range(args.repeats):
            fresh.append(first_batch_seconds(shards, backend, args, 0))
            resumed.append(first_batch_seconds(shards, backend, args, args.at))
        row = {"backend": backend, "fresh_s": statistics.median(fresh),
               "resumed_s": statistics.median(resumed), "at": args.at, "repeats": args.repeats}
        row["ratio"] = row["resumed_s"] / row["fresh_s"]
        results.append(row)
        print(f"{backend:<5} first batch: fresh {row['fresh_s']:.2f} s, resumed at "
              f"{args.at:.0%} {row['resumed_s']:.2f} s, ratio {row['ratio']:.2f} (target <= 1.5)")
    if args.json:
        write_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    run_tool(parser(), main)
