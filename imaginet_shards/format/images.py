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
    if fmt == "webp" and not decode and _structurally_complete(fmt, data):
        size = _webp_size(data)
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
