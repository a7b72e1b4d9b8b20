"""The tiled training layout: the `.tiles` member (header checks, window decoding), `retile`,
`verify` on a tiled set, and the CPU loader giving the same batches from either layout."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from click.testing import CliRunner

from helpers.shardsets import epoch_batches, pack_arrays, rewrite_shard
from helpers.trees import textured
from imaginet_shards.augment.cpu import decode
from imaginet_shards.augment.spec import PadTo, Preset, ResizedCrop, Rot90
from imaginet_shards.cli import main
from imaginet_shards.codecs.tiles import decode_tiles, decode_window, encode_tiles, pixels_sha256
from imaginet_shards.codecs.windows import decode_window as dispatch_window
from imaginet_shards.format.images import ImageCheckError, check_image
from imaginet_shards.format.tiles import TILE_CODECS, TileHeaderError, read_header
from imaginet_shards.io.shardset import load_index, open_shard_set, read_samples
from imaginet_shards.loaders.factory import make_loader
from imaginet_shards.ops.pack import PackError, PackOptions, pack
from imaginet_shards.ops.retile import RetileOptions, retile
from imaginet_shards.ops.stats import format_report, inspect
from imaginet_shards.ops.verify import verify

CODECS = sorted(TILE_CODECS.values())


@pytest.mark.parametrize("codec", CODECS)
def test_tile_windows_equal_the_image_crop(codec) -> None:
    rng = np.random.default_rng(0)
    image = textured(rng, 203, 331)  # partial tiles at the bottom and right
    data = encode_tiles(image, 64, codec)
    assert read_header(data, 1 << 20).codec == codec
    assert np.array_equal(decode_tiles(data), image)
    for top, left, height, width in [(0, 0, 1, 1), (60, 60, 10, 10), (63, 127, 2, 2), (150, 300, 53, 31),
                                     *((int(rng.integers(0, 108)), int(rng.integers(0, 236)), 96, 96)
                                       for _ in range(20))]:
        expected = image[top:top + height, left:left + width]
        assert np.array_equal(decode_window(data, top, left, height, width), expected)
        assert np.array_equal(dispatch_window(data, top, left, height, width), expected)
    with pytest.raises(ValueError, match="not inside"):
        decode_window(data, 200, 0, 4, 4)
    assert check_image(data).format == "tiles" and (check_image(data).width, check_image(data).height) == (331, 203)


def _with_field(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d[:20], "shorter than its header"),
    (lambda d: b"X" + d[1:], "magic"),
    (lambda d: _with_field(d, 8, "<B", 9), "version 9"),
    (lambda d: _with_field(d, 9, "<B", 7), "unknown tile codec 7"),
    (lambda d: _with_field(d, 12, "<I", 1 << 22), "over the"),        # height: a decompression bomb
    (lambda d: _with_field(d, 12, "<I", 100000), "need a"),           # more tiles than the member holds
    (lambda d: _with_field(d, 20, "<H", 8), "tile size 8"),
    (lambda d: d[:-1], "offsets"),                                    # truncated last tile
    (lambda d: _with_field(d, 28, "<I", 1 << 30), "offsets"),         # a tile past the end
])
def test_bad_headers_are_refused_before_decoding(edit, message) -> None:
    data = encode_tiles(textured(np.random.default_rng(1), 40, 70), 32)
    bad = edit(data)
    with pytest.raises(TileHeaderError, match=message):
        read_header(bad, 128 * 1024 * 1024)
    with pytest.raises(ImageCheckError, match=message):
        check_image(bad)


@pytest.mark.parametrize("codec", CODECS)
def test_a_corrupt_tile_is_an_error(codec) -> None:
    data = bytearray(encode_tiles(textured(np.random.default_rng(2), 64, 64), 32, codec))
    data[-30] ^= 0xFF  # inside the last tile's data
    decode_window(bytes(data), 0, 0, 32, 32)  # the other tiles still decode
    with pytest.raises(ValueError, match=r"tile \(1, 1\): corrupt"):
        decode_window(bytes(data), 32, 32, 32, 32)


def _with_last_tile(data: bytes, tile: bytes) -> bytes:
    """`data` (a `.tiles` member) with its last tile replaced by `tile`, offsets adjusted."""
    header = read_header(data, 1 << 20)
    out = bytearray(data[:int(header.offsets[-2])] + tile)
    struct.pack_into("<I", out, int(header.offsets[0]) - 4, len(out))
    return bytes(out)


COMPRESS = {"zstd-rows": zstandard.ZstdCompressor(write_checksum=True).compress,
            "zlib-rows": zlib.compress}


@pytest.mark.parametrize(("codec", "rows", "message"), [  # the last 32 x 32 tile holds 3104 bytes
    ("zstd-rows", 3104 * 4, "records 12416 bytes of rows, expected 3104"),  # refused before
    ("zstd-rows", 3103, "records 3103 bytes"),                              # decompressing
    ("zlib-rows", 3104 * 4, "holds more than the 3104 bytes"),  # inflation stops one byte after
    ("zlib-rows", 3103, "holds 3103 bytes of rows, expected 3104"),
])
def test_a_tile_of_another_size_is_an_error_and_no_bomb(codec, rows, message) -> None:
    data = encode_tiles(textured(np.random.default_rng(2), 64, 64), 32, codec)
    bad = _with_last_tile(data, COMPRESS[codec](bytes(rows)))
    decode_window(bad, 0, 0, 32, 32)
    with pytest.raises(TileHeaderError, match=rf"tile \(1, 1\) {message}"):
        decode_window(bad, 32, 32, 32, 32)


@pytest.mark.parametrize(("codec", "message"), [("zstd-rows", "unused data"),
                                                ("zlib-rows", "bytes after its zlib stream")])
def test_a_tile_with_bytes_after_its_stream_is_corrupt(codec, message) -> None:
    data = encode_tiles(textured(np.random.default_rng(2), 64, 64), 32, codec)
    header = read_header(data, 1 << 20)
    bad = _with_last_tile(data, data[int(header.offsets[-2]):] + b"\0")
    decode_window(bad, 0, 0, 32, 32)
    with pytest.raises(TileHeaderError, match=rf"tile \(1, 1\): corrupt data: .*{message}"):
        decode_window(bad, 32, 32, 32, 32)


def test_an_unknown_codec_is_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="unknown tile codec 'lz4'"):
        encode_tiles(textured(np.random.default_rng(2), 64, 64), 32, "lz4")
    with pytest.raises(ValueError, match="unknown tile codec 'lz4'"):
        RetileOptions(source="x", out=Path("y"), codec="lz4")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    """A source set of textured JPEG/PNG/WebP images (some smaller than the crops: reflect
    padding) and its tiled layout with WebP tiled too."""
    tmp = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(3)
    sizes = [(150, 210), (80, 120), (300, 130), (97, 97), (200, 260), (64, 300)]
    arrays = [(textured(rng, *sizes[i % len(sizes)]), ("png", "jpg", "webp")[i % 3]) for i in range(24)]
    source = pack_arrays(tmp / "src", arrays, max_count=7)
    tiled = tmp / "tiled"
    retile(RetileOptions(source=str(source), out=tiled, tile=64, webp=True, workers=2, progress=False))
    return source, tiled


def test_retile_keeps_shards_keys_labels_and_jpegs(layouts) -> None:
    source, tiled = layouts
    original, copy = open_shard_set(str(source)), open_shard_set(str(tiled))
    assert [s.name for s in copy.manifest.shards] == [s.name for s in original.manifest.shards]
    recipe = copy.manifest.options["retile"]
    assert recipe["codec"] == "zstd-rows"  # the default
    assert recipe["tile"] == 64 and len(recipe["pixels_sha256"]) == 16  # 8 PNG + 8 WebP
    for a, b in zip(original.manifest.shards, copy.manifest.shards):
        pairs = zip(read_samples(original, load_index(original, a), 0, a.samples),
                    read_samples(copy, load_index(copy, b), 0, b.samples), strict=True)
        for x, y in pairs:
            assert x.key == y.key and np.array_equal(x.labels, y.labels)
            if x.image_ext == "jpg":
                assert (y.image_ext, y.image, y.meta) == ("jpg", x.image, x.meta)
            else:
                assert y.image_ext == "tiles"
                pixels = decode(x.image).permute(1, 2, 0).numpy()
                assert np.array_equal(decode_tiles(y.image), pixels)
                assert recipe["pixels_sha256"][y.key] == pixels_sha256(pixels)
                assert json.loads(y.meta)["source"]["format"] == x.image_ext.replace("jpg", "jpeg")


def test_verify_checks_tiles_and_the_source(layouts, tmp_path) -> None:
    source, tiled = layouts
    assert verify(str(tiled), workers=1, progress=False, source=str(source)).ok
    report = verify(str(source), workers=1, progress=False, source=str(tiled))
    assert [p.message for p in report.problems] == ["not a tiled shard set: nothing to compare with a source"]
    # the other codec; then a tile whose pixels changed while the tar, index, .json and manifest
    # stay consistent
    broken = tmp_path / "broken"
    retile(RetileOptions(source=str(source), out=broken, tile=64, codec="zlib-rows", progress=False))
    assert open_shard_set(str(broken)).manifest.options["retile"]["codec"] == "zlib-rows"
    assert verify(str(broken), workers=1, progress=False, source=str(source)).ok
    shard = sorted(broken.glob("*.tar"))[0]
    victim = {}

    def edit(key, members):
        if members[0][0] == "tiles" and not victim:
            victim["key"] = key
            image = decode_tiles(members[0][1]).copy()
            image[0, 0] ^= 1
            return [("tiles", encode_tiles(image, 64, "zlib-rows")), *members[1:]]
        return members

    rewrite_shard(shard, edit)
    problems = verify(str(broken), workers=1, progress=False).problems
    assert any(p.key == victim["key"] and "reassemble" in p.message for p in problems)


# a preset whose leading window is resized: DALI resizes the window the loader decoded
RESIZED = Preset("resized", 64, (PadTo(80), ResizedCrop(64), Rot90(0.5)), normalize=False)


@pytest.mark.parametrize("backend", ["cpu", "dali"])
@pytest.mark.parametrize("preset", ["train", "eval", "calibration", RESIZED],
                         ids=lambda preset: getattr(preset, "name", preset))
def test_loaders_give_the_same_batches_from_both_layouts(layouts, backend, preset) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")

    source, tiled = layouts
    original, copy = epoch_batches(source, backend, preset), epoch_batches(tiled, backend, preset)
    assert len(original) == len(copy) == 4
    for (images_a, labels_a), (images_b, labels_b) in zip(original, copy):
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)


def test_inspect_shows_the_layout_and_source_formats(layouts) -> None:
    source, tiled = layouts
    report = inspect(str(tiled))
    assert "layout: tiled, 16 images (png/webp) as 64-px zstd-rows tiles" in format_report(report)
    assert report.formats == inspect(str(source)).formats  # tiles count as their source's format


def test_retile_and_verify_commands(layouts, tmp_path) -> None:
    source, _ = layouts
    runner = CliRunner()
    result = runner.invoke(main, ["retile", str(source), str(tmp_path / "t"), "--tile", "96",
                                  "--codec", "zlib-rows", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "24 samples (8 tiled, 96-px zlib-rows tiles)" in result.output
    result = runner.invoke(main, ["verify", str(tmp_path / "t"), "--source", str(source)])
    assert result.exit_code == 0 and "OK" in result.output, result.output
    result = runner.invoke(main, ["retile", str(source), str(tmp_path / "t")])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_pack_refuses_a_tiled_image_as_a_source(tmp_path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(encode_tiles(textured(np.random.default_rng(4), 40, 40), 32))
    (tmp_path / "a.txt").write_text("img/a.png,0,0,4,8\n")
    with pytest.raises(PackError, match="tiled-layout image"):
        pack(PackOptions(root=tmp_path, annotations=tmp_path / "a.txt", out=tmp_path / "out",
                         workers=1, progress=False))


def test_auto_backend_reads_a_tiled_set_on_a_gpu_with_the_cpu_backend(layouts, monkeypatch) -> None:
    pytest.importorskip("nvidia.dali")
    from imaginet_shards.loaders import dali
    from imaginet_shards.loaders.cpu import CpuLoader

    monkeypatch.setattr(dali, "device_ids", lambda device: (0, "mixed"))  # a GPU, mocked
    source, tiled = layouts
    with pytest.raises(NotImplementedError, match="tiled shard set"):
        make_loader(tiled, backend="dali", preset="eval", batch_size=4, device="cpu")
    loader = make_loader(tiled, backend="auto", preset="eval", batch_size=4, device="cpu")
    assert isinstance(loader, CpuLoader)
    loader.close()
    make_loader(source, backend="dali", preset="eval", batch_size=4, device="cpu").close()
