"""Encode an image as a `.tiles` member (`format.tiles`) and decode windows of one, reading (for a
`TiledImage` left in its shard) and inflating only the tiles that cover the window, and of each only
the rows and columns it needs.

Each tile holds the rows OpenCV's PNG encoder filters, without PNG's chunks and CRCs, unfiltered by
`codecs.png`'s kernel only up to the window's right edge, and compressed by one of two codecs
(`format.tiles.TILE_CODECS`; chosen by measurement: `tools/bench_tiles.py`, docs/benchmarks.md):

- "zstd-rows" (written by default): one zstd frame recording its content size and checksum,
  decompressed whole into exactly the tile's size and checked against its checksum; about twice as
  fast as "zlib-rows" for 1-2 % more bytes. zstd decodes a block (up to 128 KiB of rows) whole, and a
  128-pixel tile's 49 KB are one block: stopping early saves nothing (measured: no faster).
- "zlib-rows": one zlib stream, inflated by zlib-ng only down to the window's last row. A tile
  inflated to its end is checked against its zlib checksum and must end there; a partial one only
  for well-formed deflate data (as any ROI decoder: `verify` decodes every tile whole).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial

import numpy as np
import zstandard
from zlib_ng import zlib_ng

from imaginet_shards.codecs import png as png_window
from imaginet_shards.format.images import MAX_PIXELS, check_window
from imaginet_shards.format.tiles import (
    CODEC_IDS,
    TiledImage,
    TileHeader,
    TileHeaderError,
    pack_header,
    read_header,
    tile_grid,
)

ZLIB_LEVEL = 6
ZSTD_LEVEL = 1  # decodes 5-20 % faster than level 3 for 1 % more bytes (docs/benchmarks.md)
DEFAULT_CODEC = "zstd-rows"


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


def encode_tiles(pixels: np.ndarray, tile: int, codec: str = DEFAULT_CODEC) -> bytes:
    """A `.tiles` member holding the RGB uint8 (H, W, 3) `pixels` in `tile`-pixel tiles, each
    compressed with `codec` (a name in `format.tiles.TILE_CODECS`)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    compress = _compressor(codec)
    height, width = pixels.shape[:2]
    rows, cols = tile_grid(height, width, tile)
    tiles = [compress(filtered_rows(pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]))
             for r in range(rows) for c in range(cols)]
    header = pack_header(codec, height, width, tile, [len(t) for t in tiles])
    return b"".join([header, *tiles])


def _compressor(codec: str) -> Callable[[bytes], bytes]:
    """The function that compresses a tile's filtered rows with `codec`; ValueError if unknown."""
    if codec == "zstd-rows":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress
    if codec == "zlib-rows":
        return lambda rows: zlib_ng.compress(rows, ZLIB_LEVEL)
    raise ValueError(f"unknown tile codec {codec!r}, expected one of {sorted(CODEC_IDS)}")


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
    rows_of = _rows_decoder(header.codec)
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
                header, rows_of, encoded, row, col, y0 - row * size, x0 - col * size, y1 - y0, x1 - x0)
    return out


def _row_tiles(data: bytes | memoryview | TiledImage, header: TileHeader, row: int, first: int,
               last: int) -> memoryview:
    """The encoded bytes of tiles (`row`, `first`) .. (`row`, `last`), adjacent in the member."""
    if isinstance(data, TiledImage):
        return memoryview(data.read_tiles(row, first, last))
    cols = header.grid[1]
    begin, end = header.offsets[row * cols + first], header.offsets[row * cols + last + 1]
    return memoryview(data).cast("B")[int(begin):int(end)]


RowsDecoder = Callable[[memoryview, int, int, int, int], bytes]  # encoded, need, size, row, col


def _rows_decoder(codec: str) -> RowsDecoder:
    """The function giving at least the first `need` of the `size` bytes of filtered rows of the
    encoded tile (`row`, `col`) of `codec` (for zstd, one decompression context for the window's
    tiles: a fresh one per tile costs a seventh of its decoding)."""
    if codec == "zstd-rows":
        return partial(_zstd_rows, zstandard.ZstdDecompressor())
    return _zlib_rows


def _tile_window(header: TileHeader, rows_of: RowsDecoder, encoded: memoryview, row: int, col: int,
                 top: int, left: int, height: int, width: int) -> np.ndarray:
    """Rows [top, top+height) x columns [left, left+width) of tile (`row`, `col`), whose encoded
    bytes are `encoded`, decompressed by `rows_of`."""
    tile_h, tile_w = header.tile_shape(row, col)
    stride = 1 + 3 * tile_w
    rows = rows_of(encoded, (top + height) * stride, tile_h * stride, row, col)
    pixels = np.empty((height, (left + width) * 3), dtype=np.uint8)
    bad = png_window.unfilter_rows(np.frombuffer(rows, np.uint8), pixels, stride, 3, top)
    if bad >= 0:
        raise TileHeaderError(f"tile ({row}, {col}): row {bad} has an unknown filter type")
    return pixels.reshape(height, left + width, 3)[:, left:]


def _zlib_rows(encoded: memoryview, need: int, size: int, row: int, col: int) -> bytes:
    """The first `need` of the `size` bytes of rows of a "zlib-rows" tile (`row`, `col`), never
    inflating more than `size` + 1 bytes. To its end, the stream must end there, checksum checked,
    with nothing after it."""
    inflater = zlib_ng.decompressobj()
    try:
        rows = inflater.decompress(encoded, need + (need == size))
    except zlib_ng.error as error:  # type: ignore[misc]  # its stub types `error` as an instance
        raise TileHeaderError(f"tile ({row}, {col}): corrupt data: {error}") from None
    if len(rows) > size:
        raise TileHeaderError(f"tile ({row}, {col}) holds more than the {size} bytes of rows expected")
    if len(rows) != need or (need == size and not inflater.eof):
        raise TileHeaderError(f"tile ({row}, {col}) holds {len(rows)} bytes of rows, expected {size}")
    if need == size and inflater.unused_data:
        raise TileHeaderError(f"tile ({row}, {col}): corrupt data: bytes after its zlib stream")
    return rows


def _zstd_rows(decompressor: zstandard.ZstdDecompressor, encoded: memoryview, need: int, size: int,
               row: int, col: int) -> bytes:
    """The `size` bytes of rows of a "zstd-rows" tile (`row`, `col`), all decompressed (`need` is
    not used: see the module's docstring): its frame must record exactly `size` (nothing larger is
    ever allocated) and match its checksum."""
    try:
        recorded = zstandard.get_frame_parameters(encoded).content_size
        if recorded != size:
            raise TileHeaderError(f"tile ({row}, {col}) records {recorded} bytes of rows, expected "
                                  f"{size}")
        return decompressor.decompress(encoded, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise TileHeaderError(f"tile ({row}, {col}): corrupt data: {error}") from None


def decode_tiles(data) -> np.ndarray:
    """All pixels of a `.tiles` member (its bytes or a `TiledImage`), RGB uint8 (H, W, 3)."""
    header = data.header if isinstance(data, TiledImage) else tile_header(data)
    return decode_window(data, 0, 0, header.height, header.width)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The sha256 of decoded pixels: their shape, then their bytes in C order (what a tiled set's
    manifest records for each tiled image)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    digest.update(pixels.data)
    return digest.hexdigest()
