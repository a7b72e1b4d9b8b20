#!/usr/bin/env python3
"""Resident memory over many epochs: does a loader stay flat for a long training run?

    python tools/bench_epochs.py                      # 100 epochs, both backends, a small sample
    python tools/bench_epochs.py --epochs 400 --shards DIR

Each backend runs in its own process: it builds one loader, iterates `--epochs` epochs
(`set_epoch` each time) and prints the RSS of the process and its children (DataLoader workers)
after epoch `--baseline` and after the last epoch, and their difference (target: within 100 MB),
with the time to the first batch and the mean seconds per epoch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imaginet_shards.bench.resources import tree_memory
from imaginet_shards.cli_common import run_tool, write_json

MB = 1024 * 1024


def sample_shards(work: Path, count: int) -> Path:
    """A small generated shard set (the sample at max side 256, 16 samples per shard)."""
    from bench_loaders import prepare

    return prepare(work, count, 256, 1, max_count=16, progress=False)[2]


def run_epochs(shards: Path, backend: str, args: argparse.Namespace) -> dict:
    """One backend's figures, measured in this process."""
    from imaginet_shards.loaders import make_loader

    started = time.perf_counter()
    loader = make_loader(shards, backend=backend, preset=args.preset, batch_size=args.batch_size,
                         rank=0, world_size=1, device="cpu", workers=args.workers)
    first_batch = rss_baseline = 0.0
    epoch_times = []
    with loader:
        for epoch in range(args.epochs):
            begin = time.perf_counter()
            loader.set_epoch(epoch)
            for number, _ in enumerate(loader):
                if epoch == 0 and number == 0:
                    first_batch = time.perf_counter() - started
            epoch_times.append(time.perf_counter() - begin)
            if epoch + 1 == args.baseline:
                rss_baseline = tree_memory()[0] / MB
        rss_last = tree_memory()[0] / MB
    return {"backend": backend, "epochs": args.epochs, "batches_per_epoch": len(loader),
            "first_batch_s": round(first_batch, 3),
            "epoch_s": round(sum(epoch_times[1:]) / max(len(epoch_times) - 1, 1), 3),
            f"rss_mb_epoch_{args.baseline}": round(rss_baseline, 1),
            f"rss_mb_epoch_{args.epochs}": round(rss_last, 1),
            "rss_growth_mb": round(rss_last - rss_baseline, 1)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, help="Shard set (default: generate a small sample).")
    parser.add_argument("--count", type=int, default=80, help="Sample images to generate (>= 78).")
    parser.add_argument("--backends", default="cpu,dali", help="Comma-separated backends.")
    parser.add_argument("--epochs", type=int, default=100, help="Epochs to run.")
    parser.add_argument("--baseline", type=int, default=5,
                        help="The epoch after which the first RSS is taken.")
    parser.add_argument("--preset", default="train", help="Perturbation preset.")
    parser.add_argument("--batch-size", type=int, default=16, help="Samples per batch.")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads or DataLoader workers.")
    parser.add_argument("--json", help="Also write the figures as JSON ('-': stdout).")
    return parser


def main(args: argparse.Namespace) -> None:
    if not 0 < args.baseline < args.epochs:
        raise ValueError(f"--baseline must be in 1..{args.epochs - 1}, got {args.baseline}")
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-epochs-") as work:
        shards = args.shards or sample_shards(Path(work), args.count)
        if len(backends) == 1:
            results = [run_epochs(shards, backends[0], args)]
        else:  # one process per backend: each RSS is that backend's alone
            results = []
            for backend in backends:
                figures = Path(work) / f"{backend}.json"
                command = [sys.executable, __file__, "--shards", str(shards), "--backends", backend,
                           *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                             if k in ("epochs", "baseline", "preset", "batch_size", "workers")),
                           "--json", str(figures)]
                subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
                results += json.loads(figures.read_text())
    out = sys.stderr if args.json == "-" else sys.stdout
    for r in results:
        print(f"{r['backend']:<5} {r['epochs']} epochs of {r['batches_per_epoch']} batches: "
              f"RSS {r[f'rss_mb_epoch_{args.baseline}']:.1f} MB after epoch {args.baseline}, "
              f"{r[f'rss_mb_epoch_{args.epochs}']:.1f} MB after epoch {args.epochs} "
              f"({r['rss_growth_mb']:+.1f} MB); first batch {r['first_batch_s']:.2f} s, "
              f"{r['epoch_s']:.2f} s/epoch", file=out)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    run_tool(parser(), main)
