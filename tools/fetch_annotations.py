#!/usr/bin/env python3
"""Download the official ImagiNet annotation files (for users with internet; never run by tests).

    python tools/fetch_annotations.py --out annotations/official

Files come from the authors' repository (github.com/delyan-boychev/imaginet, `annotations/`); each is
validated with imaginet_shards.annotations before it is renamed into place, and its sha256 printed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import requests

from imaginet_shards.format.annotations import AnnotationError, read_annotations

BASE = "https://raw.githubusercontent.com/delyan-boychev/imaginet/{ref}/annotations/{name}"
FILES = ("train_annotations.txt", "calibration.txt", "test_annotations.txt",
         "test_annotations_gan.txt", "test_annotations_sd.txt",
         "test_annotations_midjourney.txt", "test_annotations_dalle3.txt")


def fetch(name: str, out: Path, ref: str, timeout: float) -> Path:
    url = BASE.format(ref=ref, name=name)
    response = requests.get(url, timeout=timeout)
    if response.status_code != 200:
        raise SystemExit(f"{url}: HTTP {response.status_code}")
    tmp = out / f".{name}.tmp"
    tmp.write_bytes(response.content)
    try:
        frame = read_annotations(tmp)
    except AnnotationError as exc:
        tmp.unlink()
        raise SystemExit(f"{url}: downloaded file does not validate:\n{exc}") from None
    target = out / name
    os.replace(tmp, target)
    print(f"{target}: {len(frame)} rows, sha256 {hashlib.sha256(response.content).hexdigest()}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ref", default="main", help="branch, tag or commit of the authors' repository")
    parser.add_argument("--files", nargs="*", default=list(FILES))
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.files:
        fetch(name, args.out, args.ref, args.timeout)


if __name__ == "__main__":
    main()
