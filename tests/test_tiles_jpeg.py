"""`retile --jpeg`: JPEG images (colour, greyscale, CMYK) tiled too, decoded once as the loaders
decode them: the same batches from either layout, `verify` over their tiles, and a JPEG no loader
can decode (12-bit) stopping `retile` with its shard and key."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from helpers.shardsets import epoch_batches, pack_arrays, rewrite_shard
from helpers.trees import textured
from imaginet_shards.augment.cpu import decode
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.cli import main
from imaginet_shards.codecs.tiles import decode_tiles, encode_tiles, pixels_sha256
from imaginet_shards.errors import SampleError
from imaginet_shards.io.shardset import load_index, open_shard_set, read_samples
from imaginet_shards.ops.retile import RetileOptions, retile
from imaginet_shards.ops.stats import format_report, inspect
from imaginet_shards.ops.verify import verify

SIZES = [(150, 210), (80, 120), (300, 130), (97, 97), (200, 260), (64, 300)]


def _image(rng: np.random.Generator, i: int) -> tuple[np.ndarray | Image.Image, str]:
    """Colour JPEGs (4:2:0), greyscale and CMYK JPEGs, and PNGs, some smaller than the crops."""
    pixels = textured(rng, *SIZES[i % len(SIZES)])
    kind = i % 4
    if kind == 1:
        return Image.fromarray(pixels[:, :, 1]), "jpg"
    if kind == 2:
        return Image.fromarray(pixels).convert("CMYK"), "jpg"
    return pixels, ("jpg", "png")[kind // 3]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    """A source set and its tiled layout with JPEG tiled too."""
    tmp = tmp_path_factory.mktemp("tiles_jpeg")
    rng = np.random.default_rng(7)
    source = pack_arrays(tmp / "src", [_image(rng, i) for i in range(24)], max_count=7)
    tiled = tmp / "tiled"
    retile(RetileOptions(source=str(source), out=tiled, tile=64, jpeg=True, workers=2, progress=False))
    return source, tiled


def _pairs(source: Path, tiled: Path):
    original, copy = open_shard_set(str(source)), open_shard_set(str(tiled))
    for a, b in zip(original.manifest.shards, copy.manifest.shards, strict=True):
        yield from zip(read_samples(original, load_index(original, a), 0, a.samples),
                       read_samples(copy, load_index(copy, b), 0, b.samples), strict=True)


def test_retile_jpeg_tiles_every_jpeg_as_decode_gives_it(layouts) -> None:
    source, tiled = layouts
    recipe = open_shard_set(str(tiled)).manifest.options["retile"]
    assert recipe["formats"] == ["png", "jpg"] and len(recipe["pixels_sha256"]) == 24
    modes = set()
    for x, y in _pairs(source, tiled):
        assert x.key == y.key and np.array_equal(x.labels, y.labels) and y.image_ext == "tiles"
        pixels = decode(x.image).permute(1, 2, 0).numpy()
        assert np.array_equal(decode_tiles(y.image), pixels)
        assert recipe["pixels_sha256"][y.key] == pixels_sha256(pixels)
        meta, source_meta = json.loads(y.meta), json.loads(x.meta)
        assert meta["source"]["format"] == source_meta["format"] == x.image_ext.replace("jpg", "jpeg")
        assert meta["source"]["bytes"] == len(x.image)
        assert meta["source"]["sha256"] == source_meta["sha256"] == hashlib.sha256(x.image).hexdigest()
        if x.image_ext == "jpg":
            modes.add(Image.open(io.BytesIO(x.image)).mode)
    assert modes == {"RGB", "L", "CMYK"}
    assert "layout: tiled, 24 images (png/jpg) as 64-px" in format_report(inspect(str(tiled)))


def test_verify_passes_and_catches_a_damaged_jpeg_tile(layouts, tmp_path) -> None:
    source, tiled = layouts
    assert verify(str(tiled), workers=1, progress=False, source=str(source)).ok
    broken = tmp_path / "broken"
    retile(RetileOptions(source=str(source), out=broken, tile=64, jpeg=True, progress=False))
    jpeg_keys = {x.key for x, _ in _pairs(source, broken) if x.image_ext == "jpg"}
    shard = sorted(broken.glob("*.tar"))[0]
    victim = {}

    def edit(key, members):
        if key in jpeg_keys and not victim:
            victim["key"] = key
            image = decode_tiles(members[0][1]).copy()
            image[-1, -1] ^= 4
            data = encode_tiles(image, 64)  # its .json records the new member's sha256
            meta = json.loads(members[-1][1])
            meta["sha256"] = hashlib.sha256(data).hexdigest()
            return [("tiles", data), *members[1:-1], ("json", json.dumps(meta).encode())]
        return members

    rewrite_shard(shard, edit)
    problems = verify(str(broken), workers=1, progress=False, source=str(source)).problems
    assert {(p.key, p.message) for p in problems} == {  # the shard's bytes changed too
        (victim["key"], "tiles do not reassemble to the recorded pixels"),
        ("", "sha256 differs from the manifest")}


@pytest.mark.parametrize("preset", ["train", "eval", "calibration"])
def test_cpu_loader_gives_the_same_batches_from_both_layouts(layouts, preset) -> None:
    source, tiled = layouts
    original, copy = epoch_batches(source, "cpu", preset), epoch_batches(tiled, "cpu", preset)
    assert len(original) == len(copy) == 4
    for (images_a, labels_a), (images_b, labels_b) in zip(original, copy):
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)


@pytest.mark.parametrize("preset", ["train", "eval"])  # calibration: 7 s more, on the CPU only
def test_dali_cpu_gives_the_same_batches_from_both_layouts(layouts, preset) -> None:
    """DALI on its CPU device: colour and greyscale JPEGs give the same pixels from the tiles as
    from DALI's own libjpeg-turbo decode of the original. CMYK JPEGs do not: their tiles hold
    OpenCV's conversion (the CPU backend's and the reference's), DALI's decoder converts CMYK
    within one level of it (measured: 1, on ~96% of the values); augmentations after the decode
    (train) carry such differences further, so CMYK is compared under eval only."""
    pytest.importorskip("nvidia.dali")
    source, tiled = layouts
    original, copy = epoch_batches(source, "dali", preset), epoch_batches(tiled, "dali", preset)
    assert len(original) == len(copy) == 4
    spec = get_preset(preset)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    for (images_a, labels_a), (images_b, labels_b) in zip(original, copy):
        assert torch.equal(labels_a, labels_b)
        cmyk = labels_a[:, 1] == 2  # content label i % 4: the fixture's CMYK JPEGs
        assert torch.equal(images_a[~cmyk], images_b[~cmyk])
        if preset == "eval" and cmyk.any():
            levels = ((images_a[cmyk] - images_b[cmyk]) * std * 255).abs()
            assert 0 < levels.max() <= 1 + 1e-3


def test_a_jpeg_no_loader_decodes_stops_retile_jpeg_with_its_key(layouts, tmp_path) -> None:
    """A 12-bit JPEG (Pillow, so `check_image`, refuses it; `pack` never stores one) in a set made
    by hand: kept byte for byte without --jpeg, a SampleError naming shard and key with it."""
    source, _ = layouts
    damaged = tmp_path / "src"
    damaged.mkdir()
    for path in source.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    shard = sorted(damaged.glob("*.tar"))[0]
    victim = {}

    def edit(key, members):
        if members[0][0] == "jpg" and not victim:
            victim["key"] = key
            data = members[0][1]  # a 12-bit frame header before the 8-bit one
            return [("jpg", data[:2] + bytes.fromhex("ffc0000b0c000800080101 1100") + data[2:]),
                    *members[1:]]
        return members

    rewrite_shard(shard, edit)
    # the manifest still records the original shard's sha256: retile reads through the index
    with pytest.raises(SampleError, match=f"{shard.name}.*{victim['key']}.*JPEG"):
        retile(RetileOptions(source=str(damaged), out=tmp_path / "out", jpeg=True, workers=1,
                             progress=False))
    assert not list((tmp_path / "out").glob("*.tar"))
    runner = CliRunner()
    result = runner.invoke(main, ["retile", str(damaged), str(tmp_path / "cli"), "--jpeg", "--workers", "1"])
    assert result.exit_code == 2 and victim["key"] in result.output, result.output
    result = runner.invoke(main, ["retile", str(damaged), str(tmp_path / "kept"), "--workers", "1"])
    assert result.exit_code == 0, result.output
