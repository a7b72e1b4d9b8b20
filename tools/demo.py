#!/usr/bin/env python3
"""The README's main command: the whole chain on the embedded sample dataset.

    make demo            # = python tools/demo.py --out runs/demo

sample → pack (one shard set per split) → verify → inspect, each stage through the same command a
user would type, printing a summary at the end.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

SPLITS = ("train", "calibration", "test")


def run(*args: str) -> None:
    command = [sys.executable, "-m", "imaginet_shards", *args]
    print(f"\n$ imaginet-shards {shlex.join(args)}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--count", type=int, default=1000, help="sample images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    data, shards = args.out / "sample", args.out / "shards"
    run("sample", str(data), "--count", str(args.count), "--seed", str(args.seed))
    for split in SPLITS:
        run("pack", "--root", str(data), "--annotations", str(data / f"{split}.txt"),
            "--out", str(shards / split), "--max-count", "100", "--overwrite")
        run("verify", str(shards / split), "--decode")
    run("inspect", str(shards / "train"), "--json", str(args.out / "inspect-train.json"))
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; shard sets under {shards}")


if __name__ == "__main__":
    main()
