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
import sys
from pathlib import Path

import requests

from imaginet_shards.cli_common import EXIT_OK, EXIT_PROBLEMS, run_tool
from imaginet_shards.errors import AnnotationError
from imaginet_shards.format.annotations import read_annotations

BASE = "https://raw.githubusercontent.com/delyan-boychev/imaginet/{ref}/annotations/{name}"
FILES = ("train_annotations.txt", "calibration.txt", "test_annotations.txt",
         "test_annotations_gan.txt", "test_annotations_sd.txt",
         "test_annotations_midjourney.txt", "test_annotations_dalle3.txt")


def fetch(name: str, out: Path, ref: str, timeout: float) -> bool:
    """Download one file into `out` if it validates; False (and why, on stderr) if it does not.
    A download that fails raises OSError (requests' errors are OSErrors)."""
    url = BASE.format(ref=ref, name=name)
    response = requests.get(url, timeout=timeout)
    if response.status_code != 200:
        raise OSError(f"{url}: HTTP {response.status_code}")
    tmp = out / f".{name}.tmp"
    tmp.write_bytes(response.content)
    try:
        frame = read_annotations(tmp)
    except AnnotationError as exc:
        tmp.unlink()
        print(f"{url}: downloaded file does not validate:\n{exc}", file=sys.stderr)
        return False
    target = out / name
    os.replace(tmp, target)
    print(f"{target}: {len(frame)} rows, sha256 {hashlib.sha256(response.content).hexdigest()}")
    return True


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Folder the files are written to.")
    parser.add_argument("--ref", default="main", help="Branch, tag or commit of the authors' repository.")
    parser.add_argument("--files", nargs="*", default=list(FILES), help="Annotation files to fetch.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for each download.")
    return parser


def main(args: argparse.Namespace) -> int:
    """Exit status 1 when a downloaded file does not validate (the others are still fetched)."""
    args.out.mkdir(parents=True, exist_ok=True)
    valid = [fetch(name, args.out, args.ref, args.timeout) for name in args.files]
    return EXIT_OK if all(valid) else EXIT_PROBLEMS


if __name__ == "__main__":
    run_tool(parser(), main)
