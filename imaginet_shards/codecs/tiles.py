"""Encode an image as a `.tiles` member (`format.tiles`) and decode windows of one, reading (for a
`TiledImage` left in its shard) and inflating only the tiles that cover the window, and of each only
the rows and columns it needs.

Each tile is a bare zlib stream of PNG-filtered RGB rows (the "zlib-rows" codec, chosen by
measurement: `tools/bench_tiles.py`, docs/benchmarks.md): the rows OpenCV's PNG encoder filters,
without PNG's chunks and CRCs, inflated by zlib-ng only down to the window's last row and
unfiltered by `codecs.png`'s kernel only up to its right edge. A tile inflated to its end is
checked against its zlib checksum; a partial one only for well-formed deflate data (as any ROI
decoder: `verify` decodes every tile whole).
"""
from __future__ import annotations

import hashlib

import numpy as np
from zlib_ng import zlib_ng

from imaginet_shards.codecs import png as png_window
from imaginet_shards.format.images import MAX_PIXELS, check_window
from imaginet_shards.format.tiles import (
    TiledImage,
    TileHeader,
    TileHeaderError,
    pack_header,
    read_header,
    tile_grid,
)

ZLIB_LEVEL = 6


def filtered_rows(block: np.ndarray) -> bytes:
    """The PNG-filtered rows of an RGB tile (filter type byte first), filters chosen by OpenCV's
    PNG encoder (libpng's adaptive choice), taken from its IDAT chunks."""
    import cv2  # here: only writing tiles needs OpenCV (a fifth of a second to import), not reading them

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(block[:, :, ::-1]),  # BGR in, RGB out
                               (cv2.IMWRITE_PNG_COMPRESSION, 0))  # stored: filters only
    layout = png_window.read_layout(encoded) if ok else None
    if layout is None:
        raise ValueError(f"OpenCV could not encode a {block.shape} tile as PNG")
    view = memoryview(encoded.tobytes())
    return zlib_ng.decompress(b"".join(view[o:o + n] for o, n in layout.idat))


def encode_tiles(pixels: np.ndarray, tile: int) -> bytes:
    """A `.tiles` member holding the RGB uint8 (H, W, 3) `pixels` in `tile`-pixel tiles."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    rows, cols = tile_grid(height, width, tile)
    tiles = [zlib_ng.compress(filtered_rows(pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]),
                              ZLIB_LEVEL) for r in range(rows) for c in range(cols)]
    header = pack_header("zlib-rows", height, width, tile, [len(t) for t in tiles])
    return b"".join([header, *tiles])


def tile_header(data) -> TileHeader:
    """The checked header of a `.tiles` member (TileHeaderError, a ValueError, when bad)."""
    return read_header(data, MAX_PIXELS)


def decode_window(data: bytes | memoryview | TiledImage, top: int, left: int, height: int,
                  width: int) -> np.ndarray:
    """Pixels [top, top+height) x [left, left+width) of a `.tiles` member (its bytes, or a
    `TiledImage` left in its shard, of which only the covering tiles are read: one read per row of
    them) as RGB uint8 (height, width, 3), inflating only the covering tiles; ValueError (an
    ImageError) for a bad header or tile, a shard that ends early, or a window outside the image."""
    header = data.header if isinstance(data, TiledImage) else tile_header(data)
    check_window(top, left, height, width, header.height, header.width)
    size, cols = header.tile, header.grid[1]
    out = np.empty((height, width, 3), dtype=np.uint8)
    first, last = left // size, (left + width - 1) // size
    for row in range(top // size, (top + height - 1) // size + 1):
        y0, y1 = max(top, row * size), min(top + height, (row + 1) * size)
        run = _row_tiles(data, header, row, first, last)
        base = int(header.offsets[row * cols + first])
        for col in range(first, last + 1):
            x0, x1 = max(left, col * size), min(left + width, (col + 1) * size)
            number = row * cols + col
            encoded = run[int(header.offsets[number]) - base:int(header.offsets[number + 1]) - base]
            out[y0 - top:y1 - top, x0 - left:x1 - left] = _tile_window(
                header, encoded, row, col, y0 - row * size, x0 - col * size, y1 - y0, x1 - x0)
    return out


def _row_tiles(data: bytes | memoryview | TiledImage, header: TileHeader, row: int, first: int,
               last: int) -> memoryview:
    """The encoded bytes of tiles (`row`, `first`) .. (`row`, `last`), adjacent in the member."""
    if isinstance(data, TiledImage):
        return memoryview(data.read_tiles(row, first, last))
    cols = header.grid[1]
    begin, end = header.offsets[row * cols + first], header.offsets[row * cols + last + 1]
    return memoryview(data).cast("B")[int(begin):int(end)]


def _tile_window(header: TileHeader, encoded: memoryview, row: int, col: int, top: int, left: int,
                 height: int, width: int) -> np.ndarray:
    """Rows [top, top+height) x columns [left, left+width) of tile (`row`, `col`), whose encoded
    bytes are `encoded`."""
    tile_h, tile_w = header.tile_shape(row, col)
    stride = 1 + 3 * tile_w
    need = (top + height) * stride
    try:
        if top + height == tile_h:  # to the end: zlib checks the stream's checksum
            rows = zlib_ng.decompress(encoded, bufsize=need)
        else:
            rows = zlib_ng.decompressobj().decompress(encoded, need)
    except zlib_ng.error as error:  # type: ignore[misc]  # its stub types `error` as an instance
        raise TileHeaderError(f"tile ({row}, {col}): corrupt data: {error}") from None
    if len(rows) != (need if top + height < tile_h else tile_h * stride):
        raise TileHeaderError(f"tile ({row}, {col}) holds {len(rows)} bytes of rows, expected "
                              f"{tile_h * stride}")
    pixels = np.empty((height, (left + width) * 3), dtype=np.uint8)
    bad = png_window.unfilter_rows(np.frombuffer(rows, np.uint8), pixels, stride, 3, top)
    if bad >= 0:
        raise TileHeaderError(f"tile ({row}, {col}): row {bad} has an unknown filter type")
    return pixels.reshape(height, left + width, 3)[:, left:]


def decode_tiles(data) -> np.ndarray:
    """All pixels of a `.tiles` member, RGB uint8 (H, W, 3)."""
    header = tile_header(data)
    return decode_window(data, 0, 0, header.height, header.width)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The sha256 of decoded pixels: their shape, then their bytes in C order (what a tiled set's
    manifest records for each tiled image)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    digest.update(pixels.data)
    return digest.hexdigest()
