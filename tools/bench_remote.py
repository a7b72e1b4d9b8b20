#!/usr/bin/env python3
"""CPU-backend images/s reading the same shard set from a local S3-compatible server and from local
disk, side by side in one run.

    python tools/bench_remote.py                     # sample at realistic sizes (max side 1024)
    python tools/bench_remote.py --shards DIR        # an existing local shard set

The S3 server (moto, from the `test` extra) runs on 127.0.0.1 for the duration; the shard set is
uploaded with `pack --out s3://…`'s upload path. Loopback has no real network cost, so this measures
the streaming, retrying reader's overhead, not a network.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from imaginet_shards.bench.run import BenchOptions, run_bench
from imaginet_shards.cli_common import run_tool, write_json
from imaginet_shards.io import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' local S3 server
from helpers.s3local import moto_server  # noqa: E402


def _sample_shards(work: Path, count: int) -> Path:
    from bench_loaders import prepare

    return prepare(work, count, 1024, 1, max_count=50, progress=False)[2]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, help="Local shard set (default: generate the sample).")
    parser.add_argument("--count", type=int, default=300, help="Sample images to generate.")
    parser.add_argument("--preset", default="train", help="Perturbation preset.")
    parser.add_argument("--threads", type=int, default=2, help="DataLoader workers.")
    parser.add_argument("--batches", type=int, default=15, help="Batches timed.")
    parser.add_argument("--json", help="Also write the figures as JSON ('-': stdout, the lines go to stderr).")
    return parser


def main(args: argparse.Namespace) -> None:
    out = sys.stderr if args.json == "-" else sys.stdout
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        local = args.shards or _sample_shards(work, args.count)
        with moto_server():
            fs, _ = storage.filesystem("s3://imaginet-bench")
            fs.mkdir("imaginet-bench")
            remote = "s3://imaginet-bench/shards"
            for path in sorted(Path(local).iterdir()):
                if path.is_file():
                    storage.write_bytes(f"{remote}/{path.name}", path.read_bytes())
            results = {}
            for name, source in (("local disk", str(local)), ("local S3", remote)):
                result = run_bench(BenchOptions(backend="cpu", shards=source, preset=args.preset,
                                                threads=args.threads, batches=args.batches))
                results[name] = result
                print(f"{name:>10}: {result.summary()}", file=out, flush=True)
        ratio = results["local S3"].images_per_sec / results["local disk"].images_per_sec
        print(f"S3 / local: {ratio:.2f}x", file=out)
        if args.json:
            write_json(args.json, {k: v.record() for k, v in results.items()} | {"ratio": round(ratio, 3)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_tool(parser(), main)
