"""Decode a window of a PNG without touching what lies below or right of it.

A PNG is one zlib stream of filtered rows; each row depends on the row above and each pixel on the
pixel to its left, so a window needs every row down to its bottom, but nothing below it and, per
row, nothing right of it. Inflating stops at the window's last row (zlib-ng) and unfiltering stops at
its right edge (a numba kernel that releases the GIL, `codecs.png_kernel`). For a 96-pixel random
crop of a 1024-pixel image that is about half the inflating and a third of the unfiltering of a full
decode: neither DALI (nvImageCodec hands PNGs to OpenCV, which decodes whole images) nor
torchvision/Pillow offer it.

The fast path covers 8-bit grey, grey+alpha, RGB and RGBA without interlacing: nearly every PNG a
generator or camera pipeline writes. `decode_window` returns None for the rest (palettes, 16-bit,
Adam7) so that callers use their full decoder; like those decoders it drops alpha without blending.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from zlib_ng import zlib_ng

from imaginet_shards.errors import ImageError
from imaginet_shards.format.images import MAX_PIXELS, PNG_SIGNATURE, check_window

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (8-bit only)


class PngError(ImageError):
    """The bytes are not a well-formed PNG (bad chunk, CRC, filter or zlib data)."""


@dataclass(frozen=True)
class PngLayout:
    width: int
    height: int
    channels: int
    idat: tuple[tuple[int, int], ...]  # (offset, length) of each IDAT payload, in order

    @property
    def stride(self) -> int:
        """Bytes per filtered row: the filter type byte, then the samples."""
        return 1 + self.width * self.channels


def _chunks(data: memoryview):
    """(type, payload offset, payload length) of each chunk up to IEND, CRCs unchecked."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            raise PngError(f"chunk {kind!r} at byte {pos} runs past the end of the data")
        yield kind, pos + 8, length
        if kind == b"IEND":
            return
        pos += 12 + length
    raise PngError("no IEND chunk: the PNG is truncated")


def _check_crc(data: memoryview, kind: bytes, offset: int, length: int) -> None:
    stored, = struct.unpack_from(">I", data, offset + length)
    if zlib_ng.crc32(data[offset:offset + length], zlib_ng.crc32(kind)) != stored:
        raise PngError(f"CRC mismatch in the {kind.decode('latin-1')} chunk at byte {offset - 8}")


def read_layout(data) -> PngLayout | None:
    """The layout of a PNG the fast path handles, None for any other PNG; PngError when the
    header is broken. `data` is any bytes-like object (bytes, a NumPy uint8 array)."""
    view = memoryview(data).cast("B")
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise PngError("not a PNG (bad signature)")
    header, idat = None, []
    for kind, offset, length in _chunks(view):
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise PngError("the first chunk is not a 13-byte IHDR")
            _check_crc(view, kind, offset, length)
            header = struct.unpack_from(">IIBBBBB", view, offset)
        elif kind == b"IDAT":
            idat.append((offset, length))
    if header is None:
        raise PngError("no chunks after the signature")
    width, height, depth, colour, compression, filtering, interlace = header
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise PngError(f"{width}x{height}: empty or over the {MAX_PIXELS}-pixel limit")
    if not idat:
        raise PngError("no IDAT chunk")
    if depth != 8 or colour not in _CHANNELS or (compression, filtering, interlace) != (0, 0, 0):
        return None
    return PngLayout(width, height, _CHANNELS[colour], tuple(idat))


def _inflate_rows(view: memoryview, layout: PngLayout, rows: int) -> np.ndarray:
    """The first `rows` filtered rows (filter byte included), inflating no further than needed."""
    need = rows * layout.stride
    stream = zlib_ng.decompressobj()
    parts, have = [], 0
    for offset, length in layout.idat:
        _check_crc(view, b"IDAT", offset, length)
        try:
            part = stream.decompress(view[offset:offset + length], need - have)
        except zlib_ng.error as error:  # type: ignore[misc]  # its stub types `error` as an instance
            raise PngError(f"corrupt image data: {error}") from None
        parts.append(part)
        have += len(part)
        if have == need:
            return np.frombuffer(b"".join(parts), dtype=np.uint8)
        if stream.eof:
            break
    raise PngError(f"image data ends after {have // layout.stride} of {rows} rows")


def unfilter_rows(src: np.ndarray, dst: np.ndarray, stride: int, bpp: int, top: int) -> int:
    """Reverse the PNG row filters of the rows of `src` down to row `top + dst.shape[0]`, only the
    `dst.shape[1]` leftmost bytes of each, into `dst` from row `top` on; the index of the first row
    with an unknown filter type, or -1. The kernel (`codecs.png_kernel`) is imported on first use:
    numba takes about a CPU second to import and set up, which only PNG decoding needs."""
    from imaginet_shards.codecs.png_kernel import unfilter_rows as kernel

    return int(kernel(src, dst, stride, bpp, top))


def load_kernel() -> None:
    """Load the compiled kernel into this process now (compiling and caching it if no cache is
    usable). A process that forks workers calls it first: they inherit the loaded kernel instead
    of each loading it again (about a CPU second each, and a compile each when the cache is cold)."""
    unfilter_rows(np.frombuffer(bytes(4), np.uint8), np.empty((1, 3), np.uint8), 4, 3, 0)


def decode_window(data, top: int, left: int, height: int, width: int) -> np.ndarray | None:
    """Pixels [top, top+height) x [left, left+width) of a PNG as RGB uint8 (height, width, 3),
    decoding nothing below or right of them; None when the PNG is outside the fast path (see the
    module docstring); PngError when it is corrupt in the part that was read. What lies below the
    window is never read, so damage there goes unnoticed (as with any ROI decoder)."""
    layout = read_layout(data)
    if layout is None:
        return None
    check_window(top, left, height, width, layout.height, layout.width)
    rows = _inflate_rows(memoryview(data).cast("B"), layout, top + height)
    bpp = layout.channels
    right = left + width
    pixels = np.empty((height, right * bpp), dtype=np.uint8)
    bad = unfilter_rows(rows, pixels, layout.stride, bpp, top)
    if bad >= 0:
        raise PngError(f"row {bad} has unknown filter type {rows[bad * layout.stride]}")
    window = pixels.reshape(height, right, bpp)[:, left:]
    if bpp <= 2:  # grey (+ alpha)
        return np.repeat(window[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(window[:, :, :3])

