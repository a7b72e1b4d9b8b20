#!/usr/bin/env python3
"""CPU cost of a preset's leading crop per image format: a full decode then the crop, against the
window decoders of `imaginet_shards.codecs` (what the CPU backend does), on one thread.

    python tools/bench_windows.py DATASET_ROOT            # e.g. a tree from `imaginet-shards sample`

The crops are the preset's own draws for each image (the images whose first operation is not a
crop decode whole either way and are timed too). Figures are CPU ms per image, best of the repeats.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from imaginet_shards.augment.decisions import CropOp, draw_params
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.cli_common import run_tool, write_json
from imaginet_shards.codecs.windows import decode_window
from imaginet_shards.format.images import FORMAT_MEMBER, check_image


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="Directory searched for .jpg/.png/.webp images.")
    parser.add_argument("--preset", default="train", help="Preset whose leading crops are drawn.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes (the best is kept).")
    parser.add_argument("--json", help="Also write the figures as JSON ('-': stdout).")
    return parser


def _cpu_ms(fn, items: list, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for item in items:
            fn(*item)
        best = min(best, time.process_time() - started)
    return best / len(items) * 1e3


def _full_then_crop(data: bytes, top: int, left: int, height: int, width: int) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(pixels[top:top + height, left:left + width])


def main(args: argparse.Namespace) -> None:
    cv2.setNumThreads(1)
    preset, rng = get_preset(args.preset), np.random.default_rng(0)
    result = {}
    for fmt, ext in FORMAT_MEMBER.items():
        items = []
        for path in sorted(args.root.rglob(f"*.{ext}")):
            data = path.read_bytes()
            info = check_image(data)
            first = draw_params(preset, rng, info.height, info.width)[0]
            crop = first if isinstance(first, CropOp) else CropOp(0, 0, info.height, info.width)
            items.append((data, crop.top, crop.left, crop.height, crop.width))
        if items:
            full, window = (_cpu_ms(fn, items, args.repeats) for fn in (_full_then_crop, decode_window))
            result[fmt] = {"images": len(items), "full_cpu_ms": round(full, 2),
                           "window_cpu_ms": round(window, 2)}
            print(f"{fmt:5s} {len(items):4d} images: full decode + crop {full:6.2f} CPU ms/image, "
                  f"window {window:6.2f} ({full / window:.1f}x less)")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    run_tool(parser(), main)
