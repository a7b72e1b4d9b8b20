"""The lazy read of `.tiles` members: `read_batch` with `ShardFiles` reads only the tar and tile
headers, a crop reads only the tiles it covers (on both loaders), the pixels are those of the eager
read, and a shard cut after its index was read, or a corrupt tile, is an error naming the tile
(then the sample)."""
from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.servers import http_server
from helpers.shardsets import epoch_batches, pack_arrays
from helpers.trees import textured
from imaginet_shards.augment.cpu import augment
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.codecs.tiles import DEFAULT_CODEC, decode_tiles, decode_window, encode_tiles
from imaginet_shards.errors import SampleError
from imaginet_shards.format.tiles import TILE_CODECS, TileHeaderError, header_size, read_header
from imaginet_shards.io import shardset
from imaginet_shards.io.shardset import ShardFiles, ShardSet, load_index, open_shard_set, read_batch
from imaginet_shards.loaders import cpu as cpu_loader
from imaginet_shards.loaders.factory import make_loader
from imaginet_shards.loaders.world import sample_rng
from imaginet_shards.ops.retile import RetileOptions, retile

SAMPLES = 12


@pytest.fixture(scope="module")
def tiled_sets(tmp_path_factory) -> Callable[[str], Path]:
    """Codec -> a tiled set of 12 images (PNG and JPEG sources: tiles, and JPEGs kept) in 2
    shards, in 64-pixel tiles of that codec: a 96-pixel crop covers 4 to 9 of their 20 to 30 tiles
    (each set made once)."""
    tmp = tmp_path_factory.mktemp("lazy")
    rng = np.random.default_rng(7)
    sizes = [(300, 260), (260, 330), (320, 300)]
    arrays = [(textured(rng, *sizes[i % 3]), ("png", "png", "jpg")[i % 3]) for i in range(SAMPLES)]
    source = pack_arrays(tmp / "src", arrays, max_count=6)

    def tiled_set(codec: str) -> Path:
        out = tmp / codec
        if not out.exists():
            retile(RetileOptions(source=str(source), out=out, tile=64, codec=codec, workers=1,
                                 progress=False))
        return out
    return tiled_set


@pytest.fixture(scope="module")
def tiled(tiled_sets) -> Path:
    """The tiled set in the default codec."""
    return tiled_sets(DEFAULT_CODEC)


@pytest.fixture(params=sorted(TILE_CODECS.values()))
def any_tiled(tiled_sets, request) -> Path:
    """The tiled set in each codec."""
    return tiled_sets(request.param)


def read_all(shards: ShardSet, files: ShardFiles | None = None) -> list[shardset.Record]:
    return read_batch(shards, {}, [0] * 6 + [1] * 6, [5, 0, 1, 2, 4, 3] * 2, files)


class _CountingFile(io.FileIO):
    """A shard file that counts the bytes read through it (the tiles' preads count on their
    TiledImage)."""

    counted = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.counted += len(data)
        return data


@dataclass(frozen=True)
class CountingShardSet(ShardSet):
    opened: list = field(default_factory=list)

    def open_local(self, name):
        self.opened.append(_CountingFile(self.local_path(name)))
        return self.opened[-1]


@pytest.mark.parametrize("prefix", [shardset.TILES_PREFIX, 40], ids=["one read", "header read again"])
def test_lazy_records_give_the_eager_pixels(any_tiled, monkeypatch, prefix) -> None:
    monkeypatch.setattr(shardset, "TILES_PREFIX", prefix)
    shards = open_shard_set(str(any_tiled))
    preset = get_preset("train")
    eager = read_all(shards)
    with ShardFiles(shards) as files:
        lazy = read_all(shards, files)
        assert sum(r.tiled is not None for r in lazy) == 8  # the PNGs; JPEGs stay bytes
        for a, b in zip(eager, lazy):
            assert (a.key, a.image_ext, a.meta, a.labels.tolist()) == (b.key, b.image_ext, b.meta,
                                                                       b.labels.tolist())
            assert not a.error and not b.error and a.tiled is None
            assert b.image == (a.image if b.tiled is None else b"")
            image = b.image if b.tiled is None else b.tiled
            for epoch in range(3):
                assert np.array_equal(augment(a.image, preset, sample_rng(5, a.key, epoch)),
                                      augment(image, preset, sample_rng(5, a.key, epoch)))
            if b.tiled is not None:
                assert np.array_equal(decode_tiles(a.image), decode_window(
                    b.tiled, 0, 0, b.tiled.header.height, b.tiled.header.width))


def test_a_crop_reads_only_the_tiles_it_covers(any_tiled) -> None:
    counting = CountingShardSet(**vars(open_shard_set(str(any_tiled))))
    eager = {r.key: r for r in read_all(counting)}
    with ShardFiles(counting) as files:
        lazy = [r for r in read_all(counting, files) if r.tiled is not None]
        members = sum(len(eager[r.key].image) for r in lazy)
        jpegs = sum(len(r.image) for r in eager.values() if r.image_ext == "jpg")
        # whole JPEGs; of each sample, 4 tar headers, 3 small members and TILES_PREFIX bytes
        assert sum(f.counted for f in counting.opened) <= jpegs + SAMPLES * (7 * 512 + shardset.TILES_PREFIX)
        for record in lazy:
            header = record.tiled.header
            window = decode_window(record.tiled, 100, 70, 96, 96)  # rows 1..3, columns 1..2
            assert np.array_equal(window, decode_tiles(eager[record.key].image)[100:196, 70:166])
            cols = header.grid[1]
            covering = sum(int(header.offsets[r * cols + 3] - header.offsets[r * cols + 1])
                           for r in (1, 2, 3))
            assert record.tiled.bytes_read == covering
        tiles = sum(r.tiled.bytes_read for r in lazy)
    assert tiles < members / 2


def copy_of(tiled: Path, tmp_path: Path) -> Path:
    """A copy of the tiled set to damage."""
    dest = tmp_path / "tiled"
    dest.mkdir()
    for path in tiled.iterdir():
        dest.joinpath(path.name).write_bytes(path.read_bytes())
    return dest


def cut(shard: Path, index: shardset.ShardIndex, sample: int, keep: int) -> None:
    """Truncate `shard` after the first `keep` bytes of `sample`'s image."""
    with open(shard, "r+b") as stream:
        stream.truncate(index.samples[sample][0].offset + keep)


def test_a_shard_cut_after_its_index_was_read_is_an_error_naming_the_tile(tiled, tmp_path) -> None:
    dest = copy_of(tiled, tmp_path)
    shards = open_shard_set(str(dest))
    indexes = {0: load_index(shards, shards.manifest.shards[0])}
    with ShardFiles(shards) as files:
        record = read_batch(shards, indexes, [0], [1], files)[0]
        assert record.tiled is not None
        header = record.tiled.header
        cut(dest / record.shard, indexes[0], 1, int(header.offsets[-1]) // 2)  # in its tiles
        decode_window(record.tiled, 0, 0, 64, 64)  # the first tiles are still there
        with pytest.raises(TileHeaderError, match=r"tiles \(\d+, 0\)..\(\d+, \d+\): the shard ends \d+ "
                                                  r"bytes early \(truncated"):
            decode_window(record.tiled, 0, 0, header.height, header.width)
    with pytest.raises(ValueError, match="closed file"):  # never a recycled descriptor
        record.tiled.read_tiles(0, 0, 0)


def test_a_shard_cut_inside_a_long_tile_header_says_so(tiled, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shardset, "TILES_PREFIX", 40)  # the rest of the header: a second read
    dest = copy_of(tiled, tmp_path)
    shards = open_shard_set(str(dest))
    indexes = {0: load_index(shards, shards.manifest.shards[0])}
    cut(dest / shards.manifest.shards[0].name, indexes[0], 1, 60)  # inside its 128-byte header
    with ShardFiles(shards) as files:
        record = read_batch(shards, indexes, [0], [1], files)[0]
    assert record.tiled is None
    assert re.search(r"member \S+\.tiles: the shard ends \d+ bytes before the end of the tile "
                     r"header \(truncated", record.error), record.error


def open_files() -> list[str]:
    """What this process's file descriptors point to."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor
            pass
    return sorted(found)


def test_corrupt_tile_data_is_an_error_naming_the_tile(any_tiled, tmp_path) -> None:
    dest = copy_of(any_tiled, tmp_path)
    shards = open_shard_set(str(dest))
    with ShardFiles(shards) as files:
        record = read_batch(shards, {}, [0], [0], files)[0]
        header, entry = record.tiled.header, load_index(shards, shards.manifest.shards[0]).samples[0][0]
        at = entry.offset + int(header.offsets[header.grid[1] + 2]) - 1  # tile (1, 1)'s last byte
        with open(dest / record.shard, "r+b") as stream:
            stream.seek(at)
            flipped = bytes([stream.read(1)[0] ^ 0xFF])
            stream.seek(at)
            stream.write(flipped)
        decode_window(record.tiled, 0, 0, 64, 64)
        with pytest.raises(TileHeaderError, match=r"tile \(1, 1\): corrupt data"):
            decode_window(record.tiled, 64, 64, 64, 64)


def _cutting_read_batch(dest: Path, victims: list):
    """`read_batch` that, once it has read the first batch, cuts its first shard with tiled images
    before the tiles of the first, recording the (shard, key) of those missing their tiles."""
    real = read_batch

    def read(shards, indexes, shard_ids, samples, files=None):
        records = real(shards, indexes, shard_ids, samples, files)
        if not victims:
            shard = min(r.shard for r in records if r.tiled is not None)
            index = next(i for i in indexes.values() if i.entry.name == shard)
            first = next(i for i, members in enumerate(index.samples) if members[0].ext == "tiles")
            header_end = int(next(r for r in records if r.key == index.key(first)).tiled.header.offsets[0])
            cut(dest / shard, index, first, header_end)
            victims.extend((shard, r.key) for r in records if r.tiled is not None and r.shard == shard)
        return records
    return read


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_the_cpu_loader_names_shard_and_key_of_a_cut_tiled_image(tiled, tmp_path, monkeypatch,
                                                                 on_error) -> None:
    dest = copy_of(tiled, tmp_path)
    victims: list[tuple[str, str]] = []
    monkeypatch.setattr(cpu_loader, "read_batch", _cutting_read_batch(dest, victims))
    loader = make_loader(dest, backend="cpu", preset="train", batch_size=SAMPLES, rank=0,
                         world_size=1, seed=3, workers=0, device="cpu", on_error=on_error)
    if on_error == "raise":
        with pytest.raises(SampleError, match="the shard ends") as info:
            next(iter(loader))
        assert (info.value.shard, info.value.key) in victims
    else:
        images, _ = next(iter(loader))
        assert victims and {(s.shard, s.key) for s in loader.skipped} == set(victims)
        assert all("the shard ends" in s.reason for s in loader.skipped)
        assert len(images) == SAMPLES - len(loader.skipped)
    loader.close()
    assert not [f for f in open_files() if f.startswith(str(dest))]  # every shard file closed


def test_remote_shards_are_read_lazily_from_the_cache_only(tiled, tmp_path) -> None:
    with http_server(tiled.parent) as (base, _):
        for cache_dir, lazy in ((None, False), (str(tmp_path / "cache"), True)):
            shards = open_shard_set(f"{base}/{tiled.name}", cache_dir)
            with ShardFiles(shards) as files:
                records = read_all(shards, files)
                assert any(r.tiled is not None for r in records) == lazy
                assert not any(r.error for r in records)
            shards.close()


@pytest.mark.parametrize("backend", ["cpu", "dali"])
def test_streamed_and_lazily_read_tiles_give_the_same_batches(tiled, backend) -> None:
    """A remote set without a cache streams its tiled images whole, a local one is read lazily
    (on DALI: as tickets): the same batches, pixel for pixel."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    local = epoch_batches(tiled, backend, "train")
    with http_server(tiled.parent) as (base, _):
        streamed = epoch_batches(f"{base}/{tiled.name}", backend, "train")
    assert len(local) == len(streamed) == 2
    for (images_a, labels_a), (images_b, labels_b) in zip(local, streamed):
        assert torch.equal(labels_a, labels_b) and torch.equal(images_a, images_b)


def test_a_header_read_from_a_prefix_equals_the_whole_members() -> None:
    data = encode_tiles(textured(np.random.default_rng(4), 90, 150), 16)  # 6 x 10 tiles
    whole = read_header(data, 1 << 20)
    size = header_size(data[:24], len(data), 1 << 20)
    assert size == int(whole.offsets[0]) == 24 + 4 * 61
    part = read_header(data[:size], 1 << 20, len(data))
    assert np.array_equal(part.offsets, whole.offsets)
    assert (part.height, part.width, part.tile) == (whole.height, whole.width, whole.tile)
    with pytest.raises(TileHeaderError, match="of which 100 bytes are given"):
        read_header(data[:100], 1 << 20, len(data))
    with pytest.raises(TileHeaderError, match="need a 268-byte header, the member has 200"):
        header_size(data[:24], 200, 1 << 20)


def _counting_preads(monkeypatch) -> list[int]:
    """The sizes of every `os.pread` from now on (the tiles a TiledImage reads)."""
    sizes: list[int] = []
    real = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real(fd, size, offset)
        sizes.append(len(data))
        return data
    monkeypatch.setattr(os, "pread", pread)
    return sizes


def test_dali_reads_only_the_tiles_its_crops_cover_and_closes_the_files(tiled, monkeypatch) -> None:
    """On the DALI backend (CPU device) too, a tiled image in a local shard is read lazily: its
    crops read only their tiles, and every shard file is closed once its run is over, also after
    an epoch left early."""
    pytest.importorskip("nvidia.dali")
    shards = open_shard_set(str(tiled))
    members = sum(e.size for i, entry in enumerate(shards.manifest.shards)
                  for sample in load_index(shards, entry).samples for e in sample if e.ext == "tiles")
    preads = _counting_preads(monkeypatch)
    loader = make_loader(tiled, backend="dali", preset="train", batch_size=4, rank=0, world_size=1,
                         seed=3, workers=2, device="cpu")
    next(iter(loader))  # an epoch left early: its runs in flight are drained by the next
    preads.clear()
    loader.set_epoch(1)
    assert sum(len(labels) for _, labels in loader) == SAMPLES
    assert 0 < sum(preads) < members / 2
    assert not [f for f in open_files() if f.startswith(str(tiled))]
    loader.close()


def test_dali_names_shard_and_key_of_a_corrupt_tile(tiled, tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    dest = copy_of(tiled, tmp_path)
    shards = open_shard_set(str(dest))
    with ShardFiles(shards) as files:
        record = read_batch(shards, {}, [0], [0], files)[0]
        header, entry = record.tiled.header, load_index(shards, shards.manifest.shards[0]).samples[0][0]
    at = entry.offset + int(header.offsets[header.grid[1] + 1]) + 8  # inside tile (1, 1)
    with open(dest / record.shard, "r+b") as stream:
        stream.seek(at)
        stream.write(bytes(16))
    loader = make_loader(dest, backend="dali", preset="eval", batch_size=SAMPLES, rank=0,
                         world_size=1, workers=2, device="cpu")
    with pytest.raises(SampleError, match=r"tile \(1, 1\): corrupt data") as info:
        next(iter(loader))
    assert (info.value.shard, info.value.key) == (record.shard, record.key)
    loader.close()
    assert not [f for f in open_files() if f.startswith(str(dest))]
