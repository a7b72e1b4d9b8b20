"""Encode an image as a `.tiles` member (`format.tiles`) and decode windows of one, inflating only
the tiles that cover the window, and of each only the rows and columns it needs.

Each tile is an 8-bit RGB PNG decoded by `codecs.png` (the codec chosen by measurement:
`tools/bench_tiles.py`, docs/benchmarks.md), so a tile inflates only down to the window's last row
and unfilters only up to its right edge.
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np

from imaginet_shards.codecs import png as png_window
from imaginet_shards.format.images import MAX_PIXELS, check_window
from imaginet_shards.format.tiles import TileHeader, TileHeaderError, pack_header, read_header, tile_grid

PNG_LEVEL = 6  # zlib level of the tiles: level 9 saves ~1 % for twice the encoding time


def encode_tiles(pixels: np.ndarray, tile: int) -> bytes:
    """A `.tiles` member holding the RGB uint8 (H, W, 3) `pixels` in `tile`-pixel PNG tiles."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    rows, cols = tile_grid(height, width, tile)
    bgr = pixels[:, :, ::-1]  # OpenCV writes BGR arrays as RGB PNGs
    tiles = []
    for row in range(rows):
        for col in range(cols):
            block = np.ascontiguousarray(bgr[row * tile:(row + 1) * tile, col * tile:(col + 1) * tile])
            ok, encoded = cv2.imencode(".png", block, (cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL))
            if not ok:
                raise ValueError(f"OpenCV could not encode a {block.shape} tile as PNG")
            tiles.append(encoded.tobytes())
    header = pack_header("png", height, width, tile, [len(t) for t in tiles])
    return b"".join([header, *tiles])


def tile_header(data) -> TileHeader:
    """The checked header of a `.tiles` member (TileHeaderError, a ValueError, when bad)."""
    return read_header(data, MAX_PIXELS)


def decode_window(data, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Pixels [top, top+height) x [left, left+width) of a `.tiles` member as RGB uint8 (height,
    width, 3), decoding only the covering tiles; ValueError (an ImageError) for a bad header or
    tile, or a window outside the image."""
    header = tile_header(data)
    check_window(top, left, height, width, header.height, header.width)
    size = header.tile
    out = np.empty((height, width, 3), dtype=np.uint8)
    for row in range(top // size, (top + height - 1) // size + 1):
        y0, y1 = max(top, row * size), min(top + height, (row + 1) * size)
        for col in range(left // size, (left + width - 1) // size + 1):
            x0, x1 = max(left, col * size), min(left + width, (col + 1) * size)
            out[y0 - top:y1 - top, x0 - left:x1 - left] = _tile_window(
                header, data, row, col, y0 - row * size, x0 - col * size, y1 - y0, x1 - x0)
    return out


def _tile_window(header: TileHeader, data, row: int, col: int, top: int, left: int, height: int,
                 width: int) -> np.ndarray:
    encoded = header.tile_bytes(data, row, col)
    layout = png_window.read_layout(encoded)
    if layout is None or layout.channels != 3 or \
            (layout.height, layout.width) != header.tile_shape(row, col):
        raise TileHeaderError(f"tile ({row}, {col}) is not an 8-bit RGB PNG of "
                              f"{header.tile_shape(row, col)} pixels")
    window = png_window.decode_window(encoded, top, left, height, width)
    if window is None:  # read_layout accepted it, so the decoder does too
        raise TileHeaderError(f"tile ({row}, {col}) is outside the PNG fast path")
    return window


def decode_tiles(data) -> np.ndarray:
    """All pixels of a `.tiles` member, RGB uint8 (H, W, 3)."""
    header = tile_header(data)
    return decode_window(data, 0, 0, header.height, header.width)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The sha256 of decoded pixels: their shape, then their bytes in C order (what a tiled set's
    manifest records for each tiled image)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    digest.update(memoryview(pixels).cast("B"))
    return digest.hexdigest()
