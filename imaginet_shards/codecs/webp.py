"""Decode a window of a WebP image with libwebp's cropping, which stops at the window's last row.

libwebp (through the `webp` package's cffi binding) decodes lossy images macroblock row by
macroblock row and lossless ones row by row, and with cropping enabled it stops below the crop:
for a 96-pixel random crop of a 1024-pixel image that halves the work of a full decode.

Cropping is pixel-exact only when the crop starts on even coordinates and leaves one pixel of
margin on every side (chroma is stored at half resolution and upsampled from its neighbours), so
the decoded rectangle is widened accordingly and trimmed afterwards; tests compare every window with
a full decode. The binding declares only some fields of `WebPDecoderOptions`; the cropping fields are
written at their offsets in libwebp's ABI, which `_OPTIONS` checks against the fields it does know.
"""
from __future__ import annotations

import numpy as np
from webp import ffi, lib

from imaginet_shards.errors import ImageError
from imaginet_shards.format.images import MAX_PIXELS, check_window

_OPTIONS = ffi.offsetof("WebPDecoderConfig", "options")
# WebPDecoderOptions: bypass_filtering, no_fancy_upsampling, use_cropping, crop_left, crop_top,
# crop_width, crop_height, ... use_threads (the 11th int), ..., uint32_t pad[5]
_USE_CROPPING = 2
_ABI_OK = (ffi.offsetof("struct WebPDecoderOptions", "use_threads") == 10 * ffi.sizeof("int")
           and ffi.sizeof("struct WebPDecoderOptions") == 19 * 4 and _OPTIONS % ffi.sizeof("int") == 0)
_STATUS = {1: "out of memory", 2: "invalid parameter", 3: "bitstream error",
           4: "unsupported feature", 7: "truncated data"}  # VP8StatusCode


class WebpError(ImageError):
    """libwebp could not decode the bytes."""


def _check(status: int, what: str) -> None:
    if status != lib.VP8_STATUS_OK:
        raise WebpError(f"{what}: {_STATUS.get(status, f'libwebp status {status}')}")


def decode_window(data, top: int, left: int, height: int, width: int) -> np.ndarray | None:
    """Pixels [top, top+height) x [left, left+width) of a WebP image as RGB uint8 (height, width,
    3), alpha dropped as full decoders do; None for animations or where the binding's struct layout
    is not the expected one; WebpError for data libwebp rejects."""
    config = ffi.new("WebPDecoderConfig*")
    if not _ABI_OK or not lib.WebPInitDecoderConfig(config):
        return None
    source = ffi.from_buffer(data)
    _check(lib.WebPGetFeatures(source, len(source), ffi.addressof(config, "input")),
           "not a decodable WebP image")
    features = config.input
    if features.has_animation:
        return None
    full_h, full_w = features.height, features.width
    if full_w * full_h > MAX_PIXELS:
        raise WebpError(f"{full_w}x{full_h} is over the {MAX_PIXELS}-pixel limit")
    check_window(top, left, height, width, full_h, full_w)
    bottom, right = top + height, left + width
    y0, x0 = max(top - 1, 0) & ~1, max(left - 1, 0) & ~1
    y1, x1 = min(bottom + 1, full_h), min(right + 1, full_w)
    options = ffi.cast("int*", config) + _OPTIONS // ffi.sizeof("int") + _USE_CROPPING
    options[0:5] = [1, x0, y0, x1 - x0, y1 - y0]  # use_cropping, left, top, width, height
    pixels = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    output = config.output
    output.colorspace = lib.MODE_RGB
    output.is_external_memory = 1
    output.u.RGBA.rgba = ffi.cast("uint8_t*", ffi.from_buffer(pixels))
    output.u.RGBA.stride = pixels.strides[0]
    output.u.RGBA.size = pixels.nbytes
    _check(lib.WebPDecode(source, len(source), config), "corrupt WebP image")
    return pixels[top - y0:bottom - y0, left - x0:right - x0]
