"""Decode a window of a JPEG image through libjpeg-turbo's partial decompression.

nvImageCodec's libjpeg-turbo extension (the `nvidia-nvimgcodec-cu12` wheel, which bundles
libjpeg-turbo and runs on machines without a GPU) decodes a region of interest with libjpeg-turbo's
`jpeg_crop_scanline` and `jpeg_skip_scanlines`: only the iMCU columns that cover the window go
through the IDCT and colour conversion, the rows above it are only entropy-decoded, and decoding
stops below its last row. libjpeg-turbo decodes the margin iMCUs around the window itself, so the
pixels equal those of a full decode (fancy upsampling included, the default DCT); tests compare many
random windows of 4:2:0, 4:2:2, 4:4:4, 4:1:1, 4:4:0, greyscale, progressive and restart-marker
JPEGs with OpenCV's and torchvision's full decodes.

JPEGs other than 8-bit greyscale or YCbCr (CMYK, YCCK, 12-bit) are left to full decoders (None).
"""
from __future__ import annotations

import numpy as np

from imaginet_shards.errors import ImageError
from imaginet_shards.format.images import MAX_PIXELS, check_window


class JpegError(ImageError):
    """libjpeg-turbo could not decode the bytes."""


def decode_window(data, top: int, left: int, height: int, width: int) -> np.ndarray | None:
    """Pixels [top, top+height) x [left, left+width) of a JPEG image as RGB uint8 (height, width,
    3), greyscale replicated as full decoders do; None for JPEGs outside the fast path; JpegError
    for data libjpeg-turbo rejects."""
    from nvidia import nvimgcodec  # on first use: commands that decode no JPEG window skip it

    stream = nvimgcodec.CodeStream(bytes(data) if isinstance(data, memoryview) else data)
    try:  # the header is parsed on first access
        codec, colours, precision = stream.codec_name, stream.color_spec, stream.precision
        full_h, full_w = stream.height, stream.width
    except RuntimeError as exc:
        raise JpegError(f"not a decodable JPEG image: {exc}") from None
    if codec != "jpeg":
        raise JpegError(f"not a JPEG image ({codec})")
    if colours not in (nvimgcodec.ColorSpec.SYCC, nvimgcodec.ColorSpec.GRAY) or precision != 8:
        return None
    if full_w * full_h > MAX_PIXELS:
        raise JpegError(f"{full_w}x{full_h} is over the {MAX_PIXELS}-pixel limit")
    check_window(top, left, height, width, full_h, full_w)
    # A decoder per call costs ~20 us (no state shared between threads or forked workers).
    decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                                 backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)])
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SRGB, allow_any_depth=False,
                                     apply_exif_orientation=False)
    region = nvimgcodec.Region(top, left, top + height, left + width)
    image = decoder.decode(stream.get_sub_code_stream(region=region), params=params)
    if image is None:
        raise JpegError("corrupt JPEG image")
    pixels = np.asarray(image.cpu())
    if pixels.shape != (height, width, 3):
        raise JpegError(f"libjpeg-turbo returned {pixels.shape} for a {height}x{width} window")
    return pixels
