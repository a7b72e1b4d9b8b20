"""The tiled image member (`{key}.tiles`) of the tiled training layout: a small binary header, then
independently decodable tiles, so that a crop inflates only the tiles that cover it.

Layout, little-endian::

    magic     8 bytes  TILES_MAGIC
    version   u8       TILES_VERSION
    codec     u8       how each tile is stored (TILE_CODECS)
    channels  u8       3 (RGB; the loaders' decoders drop alpha and expand grey)
    reserved  u8       0
    height    u32      image rows
    width     u32      image columns
    tile      u16      tile side in pixels (the last row and column of tiles may be smaller)
    reserved  u16      0
    offsets   u32 × (tiles + 1)   start of each tile, then the end of the last, from the end of
                                  the header; tiles in row-major order

Every size is checked against the member's length and the pixel limit before anything is
allocated or inflated (no decompression bombs).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imaginet_shards.errors import ImageError

RETILE_KEY = "retile"  # the manifest option that marks a tiled shard set and holds its recipe
TILES_MAGIC = b"IMTILES\x00"
TILES_VERSION = 1
# codec id -> name: each tile is PNG-filtered RGB rows as one zlib stream ("zlib-rows") or one zstd
# frame with its content size and checksum ("zstd-rows")
TILE_CODECS = {1: "zlib-rows", 2: "zstd-rows"}
CODEC_IDS = {name: number for number, name in TILE_CODECS.items()}
MIN_TILE, MAX_TILE = 16, 4096
_FIXED = struct.Struct("<8sBBBBIIHH")


class TileHeaderError(ImageError):
    """A `.tiles` member whose header is malformed or inconsistent with its length."""


@dataclass(frozen=True)
class TileHeader:
    codec: str
    height: int
    width: int
    channels: int
    tile: int
    offsets: np.ndarray  # int64 (tiles + 1,), absolute byte positions in the member

    @property
    def grid(self) -> tuple[int, int]:
        """Rows and columns of tiles."""
        return tile_grid(self.height, self.width, self.tile)

    def tile_shape(self, row: int, col: int) -> tuple[int, int]:
        """(height, width) of tile (`row`, `col`): `tile`, less at the bottom and right edges."""
        return (min(self.tile, self.height - row * self.tile),
                min(self.tile, self.width - col * self.tile))


def tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
    """Rows and columns of `tile`-pixel tiles covering a height x width image."""
    return -(-height // tile), -(-width // tile)


def check_tile_size(tile: int) -> int:
    """`tile` if it is a usable tile side, else ValueError."""
    if not MIN_TILE <= tile <= MAX_TILE:
        raise ValueError(f"tile size must be in [{MIN_TILE}, {MAX_TILE}], got {tile}")
    return tile


def pack_header(codec: str, height: int, width: int, tile: int, sizes: list[int]) -> bytes:
    """The header of a member whose tiles (row-major) have the encoded `sizes`."""
    rows, cols = tile_grid(height, width, check_tile_size(tile))
    if len(sizes) != rows * cols:
        raise ValueError(f"{len(sizes)} tiles for a {rows}x{cols} grid")
    start = _FIXED.size + 4 * (len(sizes) + 1)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]) + start
    if offsets[-1] >= 2**32:
        raise ValueError("tiled image of 4 GiB or more")
    return (_FIXED.pack(TILES_MAGIC, TILES_VERSION, CODEC_IDS[codec], 3, 0, height, width, tile, 0)
            + offsets.astype("<u4").tobytes())


def header_size(data, length: int, max_pixels: int) -> int:
    """The length of the header of a `.tiles` member of `length` bytes, from its first bytes
    (`data`, at least the fixed part): TileHeaderError for a bad fixed part or a header longer than
    the member, so a reader of a member's header alone never asks for more bytes than it holds."""
    return _fixed_part(memoryview(data).cast("B"), length, max_pixels)[-1]


def read_header(data, max_pixels: int, length: int | None = None) -> TileHeader:
    """The checked header of a `.tiles` member (any bytes-like object: the member, or with its
    `length` given, its first bytes, the header at least); TileHeaderError saying what is wrong: bad
    magic or version, unknown codec, sizes over `max_pixels`, offsets that are not increasing or do
    not end at the member's end."""
    view = memoryview(data).cast("B")
    length = len(view) if length is None else length
    codec, height, width, tile, end = _fixed_part(view, length, max_pixels)
    if end > len(view):
        raise TileHeaderError(f"a {end}-byte header, of which {len(view)} bytes are given")
    offsets = np.frombuffer(view[_FIXED.size:end], dtype="<u4").astype(np.int64)
    if offsets[0] != end or offsets[-1] != length or (offsets[1:] <= offsets[:-1]).any():
        raise TileHeaderError("tile offsets are not increasing from the header's end to the "
                              "member's end")
    return TileHeader(TILE_CODECS[codec], height, width, 3, tile, offsets)


def _fixed_part(view: memoryview, length: int, max_pixels: int) -> tuple[int, int, int, int, int]:
    """(codec, height, width, tile, header length) from the fixed part, checked."""
    if min(len(view), length) < _FIXED.size:
        raise TileHeaderError(f"tiled image of {min(len(view), length)} bytes: shorter than its header")
    magic, version, codec, channels, _, height, width, tile, _ = _FIXED.unpack_from(view)
    if magic != TILES_MAGIC:
        raise TileHeaderError("not a tiled image (bad magic)")
    if version != TILES_VERSION:
        raise TileHeaderError(f"tiled image version {version}, this tool reads {TILES_VERSION}")
    if codec not in TILE_CODECS:
        raise TileHeaderError(f"unknown tile codec {codec}")
    if channels != 3:
        raise TileHeaderError(f"{channels} channels, expected 3")
    if height == 0 or width == 0 or height * width > max_pixels:
        raise TileHeaderError(f"{width}x{height}: empty or over the {max_pixels}-pixel limit")
    if not MIN_TILE <= tile <= MAX_TILE:
        raise TileHeaderError(f"tile size {tile} outside [{MIN_TILE}, {MAX_TILE}]")
    rows, cols = tile_grid(height, width, tile)
    end = _FIXED.size + 4 * (rows * cols + 1)
    if end > length:
        raise TileHeaderError(f"{rows}x{cols} tiles need a {end}-byte header, the member has "
                              f"{length} bytes")
    return codec, height, width, tile, end


class TiledImage:
    """A `.tiles` member left in its shard file: its checked header, and its tiles' bytes read on
    demand (`read_tiles`, one `os.pread` each: no shared file position) from `file`, where the
    member's data starts at byte `offset`. `file` stays open until the tiles are decoded (its owner
    closes it; reading after that is a ValueError). `bytes_read` counts the tile bytes read."""

    __slots__ = ("header", "_file", "_offset", "bytes_read", "__weakref__")

    def __init__(self, header: TileHeader, file: BinaryIO, offset: int):
        self.header, self._file, self._offset = header, file, offset
        self.bytes_read = 0

    def read_tiles(self, row: int, first: int, last: int) -> bytes:
        """The encoded bytes of tiles (`row`, `first`) .. (`row`, `last`), adjacent in the member;
        TileHeaderError naming them when the shard ends early (truncated after its index was read)."""
        cols = self.header.grid[1]
        begin = int(self.header.offsets[row * cols + first])
        size = int(self.header.offsets[row * cols + last + 1]) - begin
        parts: list[bytes] = []
        got = 0
        while got < size and (part := os.pread(self._file.fileno(), size - got, self._offset + begin + got)):
            parts.append(part)
            got += len(part)
        self.bytes_read += got
        if got < size:
            raise TileHeaderError(f"tiles ({row}, {first})..({row}, {last}): the shard ends "
                                  f"{size - got} bytes early (truncated after its index was read?)")
        return parts[0] if len(parts) == 1 else b"".join(parts)
