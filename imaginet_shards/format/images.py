"""Image byte checks shared by the packer, verify and the loaders: format sniffing, header size,
truncation and decompression-bomb limits. Cheap structural checks first; a full decode only when
the structure is ambiguous."""
from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from imaginet_shards.errors import ImageError
from imaginet_shards.format.tiles import TILES_MAGIC, TileHeaderError, read_header

MAX_PIXELS = 128 * 1024 * 1024  # larger images are refused (decompression bombs)
MAX_FILE_BYTES = 256 * 1024 * 1024

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Image format (as `sniff_format` names it) -> the extension of the shard member that stores it;
# "tiles" is the tiled training layout's member (`format.tiles`), never a source file.
FORMAT_MEMBER: Mapping[str, str] = {"jpeg": "jpg", "png": "png", "webp": "webp", "tiles": "tiles"}
IMAGE_MEMBERS: tuple[str, ...] = tuple(FORMAT_MEMBER.values())
# File-name suffixes of source images an annotation file may name (compared lower-cased).
SOURCE_SUFFIXES: frozenset[str] = frozenset({".jpeg", ".jpg", ".png", ".webp"})


class ImageCheckError(ImageError):
    """The bytes are not a usable JPEG/PNG/WebP image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png" or "webp"
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FORMAT_MEMBER[self.format]


def sniff_format(data: bytes) -> str | None:
    """"jpeg", "png", "webp" or "tiles" from the magic bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:8] == TILES_MAGIC:
        return "tiles"
    return None


def check_window(top: int, left: int, height: int, width: int, image_height: int,
                 image_width: int) -> None:
    """ValueError unless rows [top, top+height) x columns [left, left+width) lie inside the image
    and are not empty (the window decoders' contract)."""
    bottom, right = top + height, left + width
    if not (0 <= top < bottom <= image_height and 0 <= left < right <= image_width):
        raise ValueError(f"window rows [{top}, {bottom}) x columns [{left}, {right}) is not inside "
                         f"the {image_width}x{image_height} image")


def _structurally_complete(fmt: str, data: bytes) -> bool:
    if fmt == "jpeg":  # the tail alone: a longer run of padding only costs a full decode check
        return data[-4096:].rstrip(b"\0\r\n ")[-2:] == b"\xff\xd9"
    if fmt == "png":
        return data.endswith(_PNG_IEND)
    riff_size = struct.unpack("<I", data[4:8])[0]
    return len(data) in (riff_size + 8, riff_size + 9)


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a still or animated WebP from libwebp's header parser (`WebPGetFeatures`
    reads the RIFF and VP8/VP8L/VP8X headers alone, where Pillow sets up a whole demuxer), or None
    when libwebp rejects the header."""
    from webp import ffi, lib

    features = ffi.new("WebPBitstreamFeatures*")
    source = ffi.from_buffer(data)
    if lib.WebPGetFeatures(source, len(source), features) != lib.VP8_STATUS_OK:
        return None
    return features.width, features.height


# JPEG markers with a length and a segment, up to the first scan's (SOS, 0xDA): frame headers
# (SOFn) among them; any other marker there (restart, SOI, EOI, fill bytes) is left to Pillow.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_SEGMENTS = frozenset(range(0xC0, 0xD0)) | frozenset(range(0xDA, 0xFF))
_JPEG_MAX_SEGMENTS = 512  # real headers hold a few dozen; more goes to Pillow
# APP payload prefixes whose fields Pillow reads, with the bytes it needs
_JPEG_APP_MINIMUM = ((b"JFIF", 7), (b"Adobe", 7), (b"ICC_PROFILE\0", 14))


def _jpeg_tables_whole(segment: bytes) -> bool:
    """Whether a DQT segment holds whole quantization tables (64 entries of 1 or 2 bytes each)."""
    offset = 0
    while offset < len(segment):
        offset += 1 + 64 * (1 if segment[offset] < 16 else 2)
    return offset == len(segment)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG from the last frame header before its first scan, as Pillow reads
    it, by a bounded walk over the marker segments (Pillow also builds its tables on the way);
    None wherever the walk meets something Pillow would refuse or read otherwise (fill bytes, a
    segment past the end, a frame other than 8-bit with 1, 3 or 4 components, partial tables):
    Pillow then decides, and says why."""
    size, pos = None, 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker, end = data[pos + 1], pos + 2 + (data[pos + 2] << 8 | data[pos + 3])
        if marker not in _JPEG_SEGMENTS or end < pos + 4 or end > len(data):
            return None
        if marker == 0xDA:  # Pillow skips the scan header too
            return size
        segment = data[pos + 4:end]
        if marker in _JPEG_SOF:
            if len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3, 4) \
                    or len(segment) != 6 + 3 * segment[5]:
                return None
            size = (segment[3] << 8 | segment[4], segment[1] << 8 | segment[2])
            if 0 in size:
                return None
        elif marker == 0xDB and not _jpeg_tables_whole(segment):
            return None
        elif any(segment.startswith(prefix) and len(segment) < minimum
                 for prefix, minimum in _JPEG_APP_MINIMUM):
            return None
        pos = end
    return None


def check_image(data: bytes, decode: bool = False) -> ImageInfo:
    """Format and size of encoded image bytes, refusing non-images, truncated files and images
    above MAX_PIXELS. With `decode`, always decode fully (what `verify --decode` does). A tiled
    image's header alone is checked here (its tiles are decoded by `codecs.tiles`)."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageCheckError(f"file of {len(data)} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageCheckError("not a JPEG, PNG or WebP image (unknown magic bytes)")
    if fmt == "tiles":
        try:
            header = read_header(data, MAX_PIXELS)
        except TileHeaderError as exc:
            raise ImageCheckError(f"bad tiled image: {exc}") from None
        return ImageInfo(fmt, header.width, header.height)
    if fmt in ("jpeg", "webp") and not decode and _structurally_complete(fmt, data):
        size = _jpeg_size(data) if fmt == "jpeg" else _webp_size(data)
        # Pillow's own limit (a warning, an error here) may be below ours: Pillow then says why.
        if size is not None and size[0] * size[1] <= min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS):
            return ImageInfo(fmt, *size)
    try:
        image = _open(data)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageCheckError(f"{width}x{height} exceeds the {MAX_PIXELS}-pixel limit")
        if decode or not _structurally_complete(fmt, data):
            image.load()
    except ImageCheckError:
        raise
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = "truncated" if "truncated" in str(exc) else "undecodable"
        raise ImageCheckError(f"{reason} {fmt.upper()} image: {exc}") from None
    return ImageInfo(fmt, width, height)
