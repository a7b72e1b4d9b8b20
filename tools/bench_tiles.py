#!/usr/bin/env python3
"""Which codec should the tiles of the tiled layout use? Decode time of random crops first, size
second, for PNG and WebP images:

    python tools/bench_tiles.py                 # embedded sample at realistic sizes (max side 1024)
    python tools/bench_tiles.py --root DIR      # the PNG and WebP files under DIR
    python tools/bench_tiles.py --sets A B ...  # tiled shard sets (`retile`): tile size, codec

With --sets, for each tiled shard set (interleaved, --rounds rounds, best and median): CPU ms per
--crop pixel crop of its tiled images (4 random crops each, read lazily as the CPU backend reads
them), and the whole CPU loader's CPU ms per image (`train` preset, batch 32, `workers=0`, the 8
batches after the first, a different epoch each round), with the set's bytes.

Candidates, each image cut into --tile pixel tiles (RGB):
  png        every tile a PNG (OpenCV, zlib level 6), decoded by codecs.png: inflates only down to
             the crop's last row, unfilters only up to its right edge
  zlib-rows  the same filtered rows as a bare zlib stream (no PNG chunks, no CRC), inflated and
             unfiltered the same way (what codecs.tiles uses)
  zstd-rows  the same filtered rows as one zstd frame (at each of --zstd-levels), decompressed
             whole (a 128-pixel tile's rows are one zstd block, which decodes whole anyway) and
             unfiltered the same way (what codecs.tiles writes by default, at level 1)
  webp-ll    every tile a lossless WebP (libwebp, method 4), decoded by codecs.webp
and, for reference, the original file decoded through the window decoders (codecs.windows).
Time is process CPU time per crop (one thread), the median of --repeats passes over the same crops;
size is the sum of the tiles against the original files.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import zstandard
from zlib_ng import zlib_ng

from imaginet_shards.augment.cpu import decode
from imaginet_shards.cli_common import run_tool, write_json
from imaginet_shards.codecs import png as png_window
from imaginet_shards.codecs import tiles
from imaginet_shards.codecs import webp as webp_window
from imaginet_shards.codecs.tiles import filtered_rows
from imaginet_shards.codecs.windows import decode_window
from imaginet_shards.format.tiles import TiledImage
from imaginet_shards.io.shardset import ShardFiles, open_shard_set, read_batch
from imaginet_shards.loaders.factory import make_loader

Tile = bytes
Decoder = Callable[[bytes, int, int, int, int, int, int], np.ndarray]  # tile, th, tw, top, left, h, w


def _png(block: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(block[:, :, ::-1]),
                               (cv2.IMWRITE_PNG_COMPRESSION, 6))
    assert ok
    return encoded.tobytes()


def _unfilter(rows: np.ndarray, tile_w: int, top: int, left: int, height: int, width: int
              ) -> np.ndarray:
    pixels = np.empty((height, (left + width) * 3), dtype=np.uint8)
    png_window.unfilter_rows(rows, pixels, 1 + tile_w * 3, 3, top)
    return pixels.reshape(height, left + width, 3)[:, left:]


def _zlib_decode(tile, tile_h, tile_w, top, left, height, width):
    rows = zlib_ng.decompressobj().decompress(tile, (top + height) * (1 + tile_w * 3))
    return _unfilter(np.frombuffer(rows, np.uint8), tile_w, top, left, height, width)


def _zstd_encode(level: int, block: np.ndarray) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(filtered_rows(block))


def _zstd_decode(tile, tile_h, tile_w, top, left, height, width):
    rows = zstandard.ZstdDecompressor().decompress(tile)
    return _unfilter(np.frombuffer(rows, np.uint8), tile_w, top, left, height, width)


def codecs(zstd_levels: list[int]) -> dict[str, tuple[Callable[[np.ndarray], bytes], Decoder]]:
    """Name -> (encode an RGB tile, decode a window of an encoded tile)."""
    table: dict[str, tuple[Callable[[np.ndarray], bytes], Decoder]] = {
        "png": (_png, lambda t, th, tw, y, x, h, w: png_window.decode_window(t, y, x, h, w)),
        "zlib-rows": (lambda b: zlib_ng.compress(filtered_rows(b), 6), _zlib_decode),
    }
    for level in zstd_levels:
        table[f"zstd-rows-{level}"] = (partial(_zstd_encode, level), _zstd_decode)

    def webp_encode(block: np.ndarray) -> bytes:
        ok, encoded = cv2.imencode(".webp", np.ascontiguousarray(block[:, :, ::-1]),
                                   (cv2.IMWRITE_WEBP_QUALITY, 101))
        assert ok
        return encoded.tobytes()

    table["webp-ll"] = (webp_encode,
                        lambda t, th, tw, y, x, h, w: webp_window.decode_window(t, y, x, h, w))
    return table


def crop_tiles(tiles: list[list[bytes]], tile: int, top: int, left: int, size: int, decoder: Decoder,
               shape: tuple[int, int]) -> np.ndarray:
    out = np.empty((size, size, 3), np.uint8)
    for row in range(top // tile, (top + size - 1) // tile + 1):
        y0, y1 = max(top, row * tile), min(top + size, (row + 1) * tile)
        for col in range(left // tile, (left + size - 1) // tile + 1):
            x0, x1 = max(left, col * tile), min(left + size, (col + 1) * tile)
            th, tw = min(tile, shape[0] - row * tile), min(tile, shape[1] - col * tile)
            out[y0 - top:y1 - top, x0 - left:x1 - left] = decoder(
                tiles[row][col], th, tw, y0 - row * tile, x0 - col * tile, y1 - y0, x1 - x0)
    return out


def _median_ms(run: Callable[[], None], repeats: int, count: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return 1e3 * statistics.median(times) / count


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="Directory of images (default: generate the sample).")
    parser.add_argument("--count", type=int, default=300, help="Sample images to generate.")
    parser.add_argument("--images", type=int, default=20, help="Images per format at most.")
    parser.add_argument("--tile", type=int, default=128, help="Tile side in pixels.")
    parser.add_argument("--crop", type=int, default=96, help="Crop side in pixels.")
    parser.add_argument("--crops", type=int, default=4, help="Random crops per image.")
    parser.add_argument("--zstd-levels", type=lambda text: [int(v) for v in text.split(",")],
                        default=[1, 3, 9, 19], help="zstd levels to try, comma-separated.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes (the median is kept).")
    parser.add_argument("--sets", nargs="+", help="Tiled shard set directories to compare instead.")
    parser.add_argument("--rounds", type=int, default=9, help="With --sets: interleaved rounds.")
    parser.add_argument("--json", help="Also write the figures as JSON ('-': stdout).")
    return parser


def _set_crops(path: str, stack: ExitStack, crop: int) -> list[tuple[TiledImage, int, int]]:
    """Four random `crop`-pixel crops of each tiled image of the shard set at `path` (one shard's
    worth at least: every shard's samples, read lazily)."""
    shards = open_shard_set(path)
    files = stack.enter_context(ShardFiles(shards))
    rng, crops = np.random.default_rng(0), []
    for number, entry in enumerate(shards.manifest.shards):
        records = read_batch(shards, {}, [number] * entry.samples, list(range(entry.samples)), files)
        crops += [(r.tiled, int(rng.integers(r.tiled.header.height - crop + 1)),
                   int(rng.integers(r.tiled.header.width - crop + 1)))
                  for r in records if r.tiled is not None for _ in range(4)
                  if min(r.tiled.header.height, r.tiled.header.width) >= crop]
    return crops


def _loader_ms(path: str, epoch: int) -> float:
    """CPU ms per image of the CPU loader on `path` (see the module's docstring)."""
    loader = make_loader(path, backend="cpu", preset="train", batch_size=32, workers=0,
                         device="cpu", seed=0)
    loader.set_epoch(epoch)
    batches = iter(loader)
    next(batches)
    started, count = time.process_time(), 0
    for _ in range(8):
        count += len(next(batches)[0])
    spent = time.process_time() - started
    loader.close()
    return 1e3 * spent / count


def compare_sets(args: argparse.Namespace) -> list[dict]:
    """The figures of --sets, one row per set."""
    with ExitStack() as stack:
        crops = {path: _set_crops(path, stack, args.crop) for path in args.sets}
        crop_ms: dict[str, list[float]] = {path: [] for path in args.sets}
        loader_ms: dict[str, list[float]] = {path: [] for path in args.sets}
        for epoch in range(args.rounds):
            for path, todo in crops.items():
                started = time.process_time()
                for tiled, top, left in todo:
                    tiles.decode_window(tiled, top, left, args.crop, args.crop)
                crop_ms[path].append(1e3 * (time.process_time() - started) / len(todo))
                loader_ms[path].append(_loader_ms(path, epoch))
    rows = []
    for path in args.sets:
        manifest = open_shard_set(path).manifest
        recipe = manifest.options["retile"]
        rows.append({"set": path, "tile": recipe["tile"], "codec": recipe["codec"],
                     "megabytes": manifest.totals["bytes"] / 1e6, "crops": len(crops[path]),
                     "crop_ms": crop_ms[path], "loader_ms": loader_ms[path]})
    print(f"{'set':<28} {'tile':>4} {'codec':<10} {'MB':>7} {'ms/crop best, median':>21} "
          f"{'loader ms/image best, median':>29}")
    for row in rows:
        print(f"{row['set']:<28} {row['tile']:>4} {row['codec']:<10} {row['megabytes']:>7.1f} "
              f"{min(row['crop_ms']):>10.3f} {statistics.median(row['crop_ms']):>10.3f} "
              f"{min(row['loader_ms']):>14.2f} {statistics.median(row['loader_ms']):>14.2f}")
    print(f"({args.crop}-px crops, {args.rounds} rounds, CPU time)")
    return rows


def main(args: argparse.Namespace) -> None:
    if args.sets:
        rows = compare_sets(args)
        if args.json:
            write_json(args.json, {"crop": args.crop, "rows": rows})
        return
    if args.root is None:
        from imaginet_shards.sample import SampleOptions, write_sample

        args.root = Path(tempfile.mkdtemp(prefix="bench-tiles-")) / "sample"
        write_sample(args.root, SampleOptions(count=args.count, max_side=1024, formats="realistic"))
    rng = np.random.default_rng(0)
    table = codecs(args.zstd_levels)
    rows = []
    for suffix in (".png", ".webp"):
        files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() == suffix)[:args.images]
        if not files:
            continue
        sources = [p.read_bytes() for p in files]
        images = [decode(data).permute(1, 2, 0).numpy() for data in sources]
        crops = [(i, int(rng.integers(im.shape[0] - args.crop + 1)),
                  int(rng.integers(im.shape[1] - args.crop + 1)))
                 for i, im in enumerate(images) for _ in range(args.crops)]
        original_ms = _median_ms(lambda sources=sources, crops=crops: [
            decode_window(sources[i], y, x, args.crop, args.crop) for i, y, x in crops],
            args.repeats, len(crops))
        rows.append({"format": suffix[1:], "codec": "original file", "images": len(files),
                     "ms_per_crop": original_ms, "bytes_ratio": 1.0})
        for name, (encode, decoder) in table.items():
            tiled = [[[encode(im[r:r + args.tile, c:c + args.tile])
                       for c in range(0, im.shape[1], args.tile)]
                      for r in range(0, im.shape[0], args.tile)] for im in images]
            for (i, y, x) in crops[:len(images)]:  # correctness: every codec is lossless
                expected = images[i][y:y + args.crop, x:x + args.crop]
                got = crop_tiles(tiled[i], args.tile, y, x, args.crop, decoder, images[i].shape[:2])
                assert np.array_equal(got, expected), f"{name} is not lossless on {files[i]}"
            ms = _median_ms(lambda tiled=tiled, decoder=decoder, images=images, crops=crops: [
                crop_tiles(tiled[i], args.tile, y, x, args.crop, decoder, images[i].shape[:2])
                for i, y, x in crops], args.repeats, len(crops))
            size = sum(len(t) for image in tiled for row in image for t in row)
            rows.append({"format": suffix[1:], "codec": name, "images": len(files),
                         "ms_per_crop": ms, "bytes_ratio": size / sum(map(len, sources))})
    print(f"{'format':<6} {'codec':<14} {'images':>6} {'ms/crop':>8} {'bytes vs original':>18}")
    for row in rows:
        print(f"{row['format']:<6} {row['codec']:<14} {row['images']:>6} {row['ms_per_crop']:>8.3f} "
              f"{row['bytes_ratio']:>17.2f}x")
    print(f"({args.crop}-px crops, {args.tile}-px tiles, one thread)")
    if args.json:
        write_json(args.json, {"tile": args.tile, "crop": args.crop, "rows": rows})


if __name__ == "__main__":
    run_tool(parser(), main)
