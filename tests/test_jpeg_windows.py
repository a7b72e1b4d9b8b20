"""JPEG windows (`codecs.jpeg` through `codecs.windows`): every window of every common JPEG layout
equals the same window of OpenCV's full decode (the reference) and of torchvision's (the CPU
backend's full decoder); bad data gets a clear error, unusual JPEGs a fallback."""
from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from imaginet_shards.augment.cpu import decode_for
from imaginet_shards.augment.decisions import CropOp
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.codecs import jpeg as jpeg_window
from imaginet_shards.codecs.windows import DALI_FORMATS, decode_window
from imaginet_shards.format import images
from imaginet_shards.format.images import ImageCheckError, check_image

SIZES = [(517, 389), (333, 1001), (64, 64), (9, 17)]


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour plus noise: chroma varies across blocks, so upsampling errors would show."""
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    smooth = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


def _pil(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _cv(pixels: np.ndarray, *options: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90, *options])
    assert ok
    return encoded.tobytes()


LAYOUTS = {
    "420": lambda p: _pil(p, quality=90, subsampling=2),
    "422": lambda p: _pil(p, quality=90, subsampling=1),
    "444": lambda p: _pil(p, quality=95, subsampling=0),
    "progressive": lambda p: _pil(p, quality=80, subsampling=2, progressive=True),
    "grey": lambda p: _pil(np.ascontiguousarray(p[:, :, 0]), quality=90),
    "restarts": lambda p: _cv(p, cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
    "411": lambda p: _cv(p, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411),
    "440": lambda p: _cv(p, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440),
}


def _windows(rng: np.random.Generator, height: int, width: int, count: int):
    yield 0, 0, height, width
    yield height - 1, width - 1, 1, 1
    for _ in range(count):  # small windows at any offset, as random crops are
        h, w = int(rng.integers(1, min(height, 130) + 1)), int(rng.integers(1, min(width, 130) + 1))
        yield int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_jpeg_windows_equal_full_decodes(layout):
    rng = np.random.default_rng(len(layout))
    for height, width in SIZES:
        data = LAYOUTS[layout](_texture(rng, height, width))
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        torchvision = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                   mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(torchvision, reference)
        for top, left, h, w in _windows(rng, height, width, 25):
            window = decode_window(data, top, left, h, w)
            assert window.dtype == np.uint8 and window.shape == (h, w, 3)
            np.testing.assert_array_equal(window, reference[top:top + h, left:left + w],
                                          err_msg=f"{layout} {height}x{width}: {top},{left} {h}x{w}")


def test_cpu_backend_crops_jpegs_through_the_window_decoder():
    """The `train` preset's leading crop is decoded as a window and is not applied again."""
    rng = np.random.default_rng(1)
    data = LAYOUTS["420"](_texture(rng, 400, 300))
    draws = (decode_for(data, get_preset("train"), np.random.default_rng(seed)) for seed in range(50))
    image, ops, remaining = next(draw for draw in draws if isinstance(draw[1][0], CropOp))
    crop = ops[0]
    assert remaining == ops[1:] and tuple(image.shape) == (3, crop.height, crop.width) != (3, 400, 300)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), reference[
        crop.top:crop.top + crop.height, crop.left:crop.left + crop.width])


def test_jpeg_errors_and_fallbacks():
    data = LAYOUTS["420"](_texture(np.random.default_rng(3), 48, 40))
    with pytest.raises(jpeg_window.JpegError, match="not a decodable JPEG image"):
        jpeg_window.decode_window(data[:2] + b"\xff\x00garbage" + data[40:], 0, 0, 4, 4)
    with pytest.raises(jpeg_window.JpegError, match="corrupt JPEG image"):
        jpeg_window.decode_window(data[:len(data) // 2], 40, 0, 8, 8)
    with pytest.raises(ValueError, match="not inside the 40x48 image"):
        jpeg_window.decode_window(data, 44, 0, 8, 8)
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(cmyk, "JPEG")
    assert decode_window(cmyk.getvalue(), 0, 0, 4, 4) is None  # left to full decoders
    assert decode_window(data, 0, 0, 4, 4, DALI_FORMATS) is None  # DALI crops JPEGs itself


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """The size Pillow reads from the header, None when it refuses the header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged EXIF
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data)).size
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        return None


def test_jpeg_sizes_come_from_a_marker_walk_that_agrees_with_pillow():
    """check_image reads JPEG sizes by walking the header's segments, without Pillow: the same
    size as Pillow for every layout (EXIF, ICC, CMYK too), and on headers with random damage it
    never accepts one Pillow refuses nor reads another size (it leaves what it is unsure of to
    Pillow, whose messages for truncated and undecodable images stay as they were)."""
    rng = np.random.default_rng(11)
    pixels = _texture(rng, 61, 45)
    cmyk = io.BytesIO()
    Image.new("CMYK", (23, 19), (10, 20, 30, 40)).save(cmyk, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    blobs = [make(pixels) for make in LAYOUTS.values()] + [
        cmyk.getvalue(), _pil(pixels, exif=exif.tobytes(), icc_profile=b"\0" * 70000)]
    for blob in blobs:
        assert images._jpeg_size(blob) == _pillow_size(blob) is not None
        assert (check_image(blob).width, check_image(blob).height) == _pillow_size(blob)
    accepted = 0
    for _ in range(3000):
        blob = bytearray(blobs[int(rng.integers(len(blobs)))])
        for at in rng.integers(2, min(700, len(blob)), int(rng.integers(1, 4))):
            blob[at] = int(rng.integers(256)) if rng.random() < 0.7 else 0xFF
        size = images._jpeg_size(bytes(blob))
        if size is not None:
            accepted += 1
            assert size == _pillow_size(bytes(blob))
    assert accepted > 1000  # most damage lands in entropy-coded data or skipped segments
    with pytest.raises(ImageCheckError, match="truncated JPEG image"):
        check_image(blobs[0][:len(blobs[0]) // 2])
    twelve_bit = blobs[0][:2] + bytes.fromhex("ffc0000b0c000800080101 1100") + blobs[0][2:]
    assert images._jpeg_size(twelve_bit) is None
    with pytest.raises(ImageCheckError, match="undecodable JPEG image: cannot identify"):
        check_image(twelve_bit)
