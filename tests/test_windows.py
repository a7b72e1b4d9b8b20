"""Window decoding (`codecs.windows`, `codecs.png`, `codecs.webp`): every window equals the same window
of a full decode, nothing below a window is read, and bad data gets a clear error or a fallback."""
from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from helpers.shardsets import pack_arrays, rewrite_shard
from imaginet_shards.augment.cpu import decode
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.codecs import png as png_window
from imaginet_shards.codecs import webp as webp_window
from imaginet_shards.codecs import windows
from imaginet_shards.codecs.tiles import encode_tiles
from imaginet_shards.codecs.windows import WindowDecoder, decode_mirrored, decode_window
from imaginet_shards.format.images import PNG_SIGNATURE
from imaginet_shards.format.tiles import TiledImage, read_header
from imaginet_shards.loaders import make_loader

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _filter_row(kind: int, row: np.ndarray, up: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter `kind` applied to one row (the encoder side, written from the specification)."""
    x, b = row.astype(np.int32), up.astype(np.int32)
    a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
    if kind == 0:
        pred = np.zeros_like(x)
    elif kind == 1:
        pred = a
    elif kind == 2:
        pred = b
    elif kind == 3:
        pred = (a + b) // 2
    else:
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((x - pred) % 256).astype(np.uint8)


def encode_png(pixels: np.ndarray, filters=(0, 1, 2, 3, 4), idat_size: int = 997,
               depth: int = 8, colour: int | None = None, interlace: int = 0) -> bytes:
    """A PNG of HWC uint8 `pixels` whose rows cycle through `filters`, its zlib stream split into
    IDAT chunks of `idat_size` bytes (so windows end inside chunks and across them)."""
    height, width, bpp = pixels.shape
    flat = pixels.reshape(height, width * bpp)
    rows, up = [], np.zeros(width * bpp, np.uint8)
    for y in range(height):
        kind = filters[y % len(filters)]
        rows.append(bytes([kind]) + _filter_row(kind, flat[y], up, bpp).tobytes())
        up = flat[y]
    stream = zlib.compress(b"".join(rows), 6)
    header = struct.pack(">IIBBBBB", width, height, depth,
                         COLOUR_TYPES[bpp] if colour is None else colour, 0, 0, interlace)
    idat = b"".join(_chunk(b"IDAT", stream[i:i + idat_size]) for i in range(0, len(stream), idat_size))
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + idat + _chunk(b"IEND", b"")


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """What full decoders give for RGB output: grey replicated, alpha dropped."""
    if pixels.shape[2] <= 2:
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels[:, :, :3]


def random_windows(rng: np.random.Generator, height: int, width: int, count: int):
    yield 0, 0, height, width
    yield height - 1, width - 1, 1, 1
    for _ in range(count):
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        yield top, left, int(rng.integers(1, height - top + 1)), int(rng.integers(1, width - left + 1))


@pytest.mark.parametrize("bpp", [1, 2, 3, 4])
def test_png_windows_equal_the_pixels_for_every_filter_type(bpp):
    rng = np.random.default_rng(bpp)
    smooth = np.cumsum(rng.integers(0, 3, (37, 41, bpp)), axis=1)  # filters predict, noise does not
    pixels = ((smooth + rng.integers(0, 256, (37, 41, bpp)) * (rng.random((37, 41, 1)) < 0.3))
              % 256).astype(np.uint8)
    data = encode_png(pixels)
    expected = as_rgb(pixels)
    for top, left, height, width in random_windows(rng, 37, 41, 40):
        window = png_window.decode_window(data, top, left, height, width)
        assert window.dtype == np.uint8 and window.shape == (height, width, 3)
        np.testing.assert_array_equal(window, expected[top:top + height, left:left + width],
                                      err_msg=f"window {top},{left} {height}x{width}")


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_windows_match_pillow_on_its_own_files(mode):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (53, 64, len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    expected = np.asarray(image.convert("RGB"))
    for top, left, height, width in random_windows(rng, 53, 64, 20):
        np.testing.assert_array_equal(decode_window(buffer.getvalue(), top, left, height, width),
                                      expected[top:top + height, left:left + width])


def test_png_window_reads_nothing_below_it():
    """The rows after the window sit in a later IDAT chunk whose bytes are garbage: the window
    still decodes, a window reaching into them is reported as corrupt."""
    pixels = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    data = bytearray(encode_png(pixels, idat_size=200))
    last_idat = data.rindex(b"IDAT")
    data[last_idat + 4:last_idat + 20] = bytes(16)
    np.testing.assert_array_equal(png_window.decode_window(bytes(data), 2, 3, 5, 6),
                                  pixels[2:7, 3:9])
    with pytest.raises(png_window.PngError, match="CRC mismatch in the IDAT chunk"):
        png_window.decode_window(bytes(data), 0, 0, 40, 30)


@pytest.mark.parametrize("kwargs", [{"depth": 16}, {"colour": 3}, {"interlace": 1}])
def test_png_outside_the_fast_path_is_left_to_full_decoders(kwargs):
    data = encode_png(np.zeros((4, 4, 3), np.uint8), **kwargs)
    assert png_window.read_layout(data) is None
    assert decode_window(data, 0, 0, 2, 2) is None


def test_png_errors_name_the_problem():
    pixels = np.zeros((8, 8, 3), np.uint8)
    data = encode_png(pixels)
    with pytest.raises(png_window.PngError, match="bad signature"):
        png_window.decode_window(b"GIF89a" + data[6:], 0, 0, 1, 1)
    with pytest.raises(png_window.PngError, match="CRC mismatch in the IHDR"):
        png_window.decode_window(data[:23] + b"\x09" + data[24:], 0, 0, 1, 1)
    with pytest.raises(png_window.PngError, match="truncated"):
        png_window.decode_window(data[:-12], 0, 0, 1, 1)
    with pytest.raises(png_window.PngError, match="unknown filter type 9"):
        png_window.decode_window(encode_png(pixels, filters=(0, 9)), 0, 0, 8, 8)
    bomb = PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2,
                                                              0, 0, 0))
    with pytest.raises(png_window.PngError, match="pixel limit"):
        png_window.decode_window(bomb + _chunk(b"IDAT", b"") + _chunk(b"IEND", b""), 0, 0, 1, 1)
    with pytest.raises(ValueError, match="not inside the 8x8 image"):
        png_window.decode_window(data, 4, 4, 5, 2)
    short = PNG_SIGNATURE + _chunk(b"IHDR", data[16:29]) + _chunk(
        b"IDAT", zlib.compress(b"\x00" * 25 * 3)) + _chunk(b"IEND", b"")
    with pytest.raises(png_window.PngError, match="ends after 3 of 8 rows"):
        png_window.decode_window(short, 0, 0, 8, 8)


def _webp(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "WEBP", **options)
    return buffer.getvalue()


def _full_decode(data: bytes) -> np.ndarray:
    """torchvision's full decode (the CPU backend's decoder) as HWC."""
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                        mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("options", [{"quality": 80}, {"quality": 30}, {"lossless": True}])
@pytest.mark.parametrize("channels", [3, 4])
def test_webp_windows_equal_a_full_decode(options, channels):
    """Odd and even offsets, edges and corners: libwebp's cropping with our margins is exact."""
    rng = np.random.default_rng(channels)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 7, channels), dtype=np.uint8))
                        .resize((83, 71), Image.Resampling.BICUBIC))
    data = _webp(smooth, **options)
    expected = _full_decode(data)
    for top, left, height, width in random_windows(rng, 71, 83, 40):
        np.testing.assert_array_equal(webp_window.decode_window(data, top, left, height, width),
                                      expected[top:top + height, left:left + width],
                                      err_msg=f"window {top},{left} {height}x{width}")


def test_webp_animations_and_corrupt_data():
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=10)
    assert webp_window.decode_window(buffer.getvalue(), 0, 0, 4, 4) is None
    data = _webp(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with pytest.raises(webp_window.WebpError, match="corrupt WebP image: truncated data"):
        webp_window.decode_window(data[:len(data) // 2], 0, 0, 4, 4)
    with pytest.raises(webp_window.WebpError, match="not a decodable WebP image: bitstream error"):
        webp_window.decode_window(data[:12] + bytes(len(data) - 12), 0, 0, 4, 4)
    with pytest.raises(ValueError, match="not inside the 32x32 image"):
        webp_window.decode_window(data, 30, 0, 4, 4)


def test_window_decoder_flags_what_it_decoded():
    """A DALI batch: JPEG and corrupt PNGs come back unflagged for DALI's own decoder."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, "JPEG")
    png = encode_png(pixels)
    corrupt = png[:60] + bytes(8) + png[68:]
    encoded = [np.frombuffer(blob, np.uint8) for blob in
               (jpeg.getvalue(), png, _webp(pixels, lossless=True), corrupt)]
    starts = [np.array([3, 4], np.int32)] * 4
    shapes = [np.array([10, 12], np.int32)] * 4
    decoder = WindowDecoder(threads=2)
    images, done = decoder(encoded, starts, shapes, [np.array([20, 24], np.int32)] * 4)
    assert [bool(flag) for flag in done] == [False, True, True, False]
    assert [image.shape for image in images] == [(0, 0, 3), (10, 12, 3), (10, 12, 3), (0, 0, 3)]
    np.testing.assert_array_equal(images[1], pixels[3:13, 4:16])
    np.testing.assert_array_equal(images[2], pixels[3:13, 4:16])
    decoder.close()


def _padded_crop(pixels: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The window of `pixels` padded with OpenCV's BORDER_REFLECT_101 (what the CPU backend
    does), then cropped."""
    pad = max(pixels.shape[:2]) + max(abs(top), abs(left)) + max(height, width)
    padded = cv2.copyMakeBorder(np.ascontiguousarray(pixels), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return padded[pad + top:pad + top + height, pad + left:pad + left + width]


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (37, 50)])
def test_mirrored_windows_equal_padding_then_cropping(size):
    """Windows reaching past the image, up to several times its size, mirror it as OpenCV pads
    (a side of 1 repeats its pixel), for PNG, tiles and JPEG; windows inside are plain windows."""
    rng = np.random.default_rng(size[0])
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, "JPEG", quality=90)
    sources = {"png": (encode_png(pixels), pixels), "tiles": (encode_tiles(pixels, 16), pixels),
               "jpeg": (jpeg.getvalue(), decode_window(jpeg.getvalue(), 0, 0, *size))}
    for data, expected in sources.values():
        for _ in range(25):
            height, width = int(rng.integers(1, 40)), int(rng.integers(1, 40))
            top, left = (int(rng.integers(-3 * n - 5, 3 * n + 5)) for n in size)
            np.testing.assert_array_equal(decode_mirrored(data, top, left, height, width, size),
                                          _padded_crop(expected, top, left, height, width))


def test_images_outside_the_fast_paths_are_mirrored_whole_on_request():
    pixels = np.random.default_rng(2).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    data = cv2.imencode(".png", pixels[:, :, ::-1].astype(np.uint16) * 257)[1].tobytes()  # 16 bits
    assert decode_mirrored(data, -4, 2, 20, 5, (12, 9)) is None
    np.testing.assert_array_equal(decode_mirrored(data, -4, 2, 20, 5, (12, 9), whole=True),
                                  _padded_crop(pixels, -4, 2, 20, 5))
    with pytest.raises(ValueError, match="the header says 10x12"):
        decode_mirrored(data, 0, 0, 4, 4, (12, 10), whole=True)


def test_a_tiled_window_decoder_decodes_every_format_and_lent_images(tmp_path):
    """A tiled set's decoder: JPEGs too, windows past the borders mirrored, a `TiledImage` lent as
    a ticket read from its file (only as long as the lender keeps it), corrupt data an error."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    tiles = encode_tiles(pixels, 16)
    (tmp_path / "member").write_bytes(b"x" * 7 + tiles)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, "JPEG")
    decoder = WindowDecoder(threads=2, tiled=True)
    with open(tmp_path / "member", "rb", buffering=0) as file:
        lent = TiledImage(read_header(tiles, 1 << 20), file, 7)
        encoded = [np.frombuffer(jpeg.getvalue(), np.uint8), np.frombuffer(tiles, np.uint8),
                   decoder.lend(lent)]
        window = [np.array([-5, 20], np.int32), np.array([24, 24], np.int32),
                  np.array([40, 30], np.int32)]
        images, done = decoder(encoded, *([part] * 3 for part in window))
        offsets = lent.header.offsets  # rows 0..19 and columns 15..29 mirrored: 2 of 3 tile rows
        assert all(done) and lent.bytes_read == int(offsets[4] - offsets[0]) < len(tiles) - offsets[0]
        np.testing.assert_array_equal(images[0], _padded_crop(
            decode_window(jpeg.getvalue(), 0, 0, 40, 30), -5, 20, 24, 24))
        np.testing.assert_array_equal(images[1], _padded_crop(pixels, -5, 20, 24, 24))
        np.testing.assert_array_equal(images[2], images[1])
        ticket = encoded[2]
        del lent, encoded
        with pytest.raises(ValueError, match="let go before DALI decoded it"):
            decoder([ticket], *([part] for part in window))
    start = int(offsets[0]) + 10  # inside the first tile
    corrupt = tiles[:start] + bytes(30) + tiles[start + 30:]
    with pytest.raises(ValueError, match="corrupt data"):
        decoder([np.frombuffer(corrupt, np.uint8)], *([part] for part in window))
    with pytest.raises(ValueError, match="only a tiled decoder"):
        WindowDecoder(1).lend(TiledImage(read_header(tiles, 1 << 20), io.BytesIO(), 0))
    decoder.close()


def test_a_failed_batch_returns_once_every_thread_is_done(monkeypatch):
    """The arrays DALI hands the window route are its own buffers: an error must not leave a
    thread still reading them after the call has returned."""
    started, finished = [], []

    def slow_or_corrupt(data, *window, **options):
        started.append(data[0])
        if data[0] == 0:
            raise ValueError("corrupt")
        time.sleep(0.05)
        finished.append(data[0])
        return np.zeros((1, 1, 3), np.uint8)

    monkeypatch.setattr(windows, "decode_mirrored", slow_or_corrupt)
    decoder = WindowDecoder(threads=3, tiled=True)
    encoded = [np.zeros(3, np.uint8)] + [np.ones(2, np.uint8)] * 7  # the corrupt one first
    window = [np.array([0, 0], np.int32)] * 8
    with pytest.raises(ValueError, match="corrupt"):
        decoder(encoded, window, window, window)
    assert len(started) == 8 and len(finished) == 7
    decoder.close()


def test_the_host_route_decodes_windows_and_reports_each_failure():
    """`WindowDecoder.decode` (a tiled DALI loader's own decoding): every format, windows past
    the borders mirrored, contiguous pixels; a corrupt image gives its error in its place, the
    others their pixels."""
    rng = np.random.default_rng(8)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    tiles = encode_tiles(pixels, 16)
    start = int(read_header(tiles, 1 << 20).offsets[0]) + 10
    corrupt = tiles[:start] + bytes(30) + tiles[start + 30:]
    data = cv2.imencode(".png", pixels[:, :, ::-1].astype(np.uint16) * 257)[1].tobytes()  # 16 bits
    decoder = WindowDecoder(threads=2, tiled=True)
    found = decoder.decode([tiles, corrupt, encode_png(pixels), data],
                           [(-5, 20, 24, 24), (0, 0, 16, 16), (3, 4, 10, 12), (-4, 2, 20, 5)],
                           [(40, 30)] * 4)
    decoder.close()
    assert isinstance(found[1], ValueError) and "corrupt data" in str(found[1])
    expected = [_padded_crop(pixels, -5, 20, 24, 24), None, pixels[3:13, 4:16],
                _padded_crop(pixels, -4, 2, 20, 5)]
    for got, want in zip(found, expected):
        if want is not None:
            assert isinstance(got, np.ndarray) and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_loaders_decode_windows(tmp_path, backend):
    """Both loaders crop PNGs through windows.py: with the last IDAT chunk of a PNG overwritten
    (rows far below its centre crop), the `eval` crop still comes out exactly. A whole-image
    decode fails on it with a clear error (torchvision's libpng binding used to crash the process
    on this very PNG)."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    pixels = np.random.default_rng(4).integers(0, 256, (700, 300, 3), dtype=np.uint8)
    shards = pack_arrays(tmp_path, [(pixels, "png")])

    damaged = []

    def damage(key, members):
        edited = []
        for ext, payload in members:
            if ext == "png":
                last = payload.rindex(b"IDAT")
                assert last > len(payload) // 2  # several chunks: the damage is far below the crop
                payload = payload[:last + 4] + bytes(64) + payload[last + 68:]
                damaged.append(payload)
            edited.append((ext, payload))
        return edited

    rewrite_shard(next(shards.glob("*.tar")), damage)
    with pytest.raises(ValueError, match="corrupt image"):
        decode(damaged[0])
    preset = get_preset("eval", size=128)
    loader = make_loader(shards, backend=backend, preset=preset, batch_size=1, workers=1,
                         shuffle=False, device="cpu")
    images, _ = next(iter(loader))
    top, left = (700 - 128) // 2, (300 - 128) // 2
    expected = torch.from_numpy(pixels[top:top + 128, left:left + 128]).permute(2, 0, 1).float()
    mean = torch.tensor(preset.mean).view(3, 1, 1) * 255
    std = torch.tensor(preset.std).view(3, 1, 1) * 255
    torch.testing.assert_close(images[0], (expected - mean) / std, atol=1e-4, rtol=0)

