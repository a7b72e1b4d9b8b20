"""Broken shards: with on_error="raise" an error naming shard and key; with "skip" the sample is
dropped and counted, batch counts do not change and labels stay aligned."""
from __future__ import annotations

import io
import shutil
import struct
import zlib

import pytest
import torch
from PIL import Image

from helpers.shardsets import build_shards, labels_from_images, rewrite_shard
from imaginet_shards.errors import SampleError
from imaginet_shards.io.shardset import ShardIndex, load_manifest
from imaginet_shards.loaders import make_loader

SHARD = "imaginet-000001.tar"  # samples 000000008..000000015


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("faults"), 16, max_count=8, formats=("png", "jpg"))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small valid PNG whose header claims width x height pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def replace_image(payload: bytes):
    def edit(key, members):
        return [(e, payload if e in ("png", "jpg") else d) if key == "000000010" else (e, d)
                for e, d in members]
    return edit


def drop_labels(key, members):
    return [(e, d) for e, d in members if not (key == "000000010" and e == "labels")]


def truncate(path):
    index = ShardIndex(load_manifest(str(path.parent)).shards[1], path.with_suffix(".idx").read_text())
    image = index.samples[2][0]  # sample 000000010's image: cut in its middle
    with open(path, "r+b") as stream:
        stream.truncate(image.offset + image.size // 2)


FAULTS = {
    "truncated": (truncate, ["000000010", "000000011", "000000012", "000000013", "000000014",
                             "000000015"], "truncated"),
    "corrupt image": (lambda p: rewrite_shard(p, replace_image(b"\xff\xd8\xff garbage")),
                      ["000000010"], "image"),
    "not an image": (lambda p: rewrite_shard(p, replace_image(b"garbage")), ["000000010"],
                     "not a JPEG, PNG or WebP"),
    "missing labels": (lambda p: rewrite_shard(p, drop_labels), ["000000010"], "missing .labels"),
    "decompression bomb": (lambda p: rewrite_shard(p, replace_image(bomb_png())), ["000000010"],
                           "pixel"),
}


@pytest.fixture(params=sorted(FAULTS))
def broken(request, pristine, tmp_path):
    inject, keys, message = FAULTS[request.param]
    dest = tmp_path / "shards"
    shutil.copytree(pristine, dest)
    inject(dest / SHARD)
    return dest, keys, message


def loader_for(dest, on_error, rank=0, world_size=1):
    return make_loader(dest, backend="cpu", preset="eval", batch_size=3, rank=rank,
                       world_size=world_size, workers=1, on_error=on_error, drop_last=False)


def test_raise_names_shard_and_key(broken):
    dest, keys, message = broken
    with pytest.raises(SampleError, match=rf"{SHARD}: sample ({'|'.join(keys)}): .*{message}") as info:
        for _ in loader_for(dest, "raise"):
            pass
    assert info.value.shard == SHARD and info.value.key in keys  # the first bad batch's first
    assert message in info.value.reason and "on_error='skip'" in info.value.hint


def test_skip_drops_counts_and_keeps_labels_aligned(broken):
    dest, keys, _ = broken
    seen, skipped = [], []
    for rank in range(2):
        loader = loader_for(dest, "skip", rank, 2)
        batches = 0
        for batch in loader.batches():
            batches += 1
            seen += batch.keys
            mean, std = loader.config.preset.mean, loader.config.preset.std
            assert torch.equal(labels_from_images(batch.images, mean, std), batch.labels)
        assert batches == len(loader)
        skipped += loader.skipped
    assert sorted(s.key for s in skipped) == keys
    assert all(s.shard == SHARD for s in skipped)
    assert sorted(seen + keys) == [f"{i:09d}" for i in range(16)]
