"""Reading samples straight from the index offsets: every member's tar header is checked against the
index, a damaged sample becomes one Record with an error naming shard and key, the samples around it
read as packed, and a run of samples costs one read."""
from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers.shardsets import build_shards
from imaginet_shards.errors import ShardSetError
from imaginet_shards.format.tar import BLOCK, IndexEntry, check_member_header, member_header
from imaginet_shards.io import shardset
from imaginet_shards.io.shardset import (
    ShardIndex,
    ShardSet,
    load_index,
    open_shard_set,
    read_batch,
    read_samples,
)

SHARD = "imaginet-000000.tar"
COUNT = 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("shardset"), COUNT, max_count=COUNT, sizes=(24, 40))


@pytest.fixture
def shards(pristine, tmp_path) -> Path:
    dest = tmp_path / "shards"
    shutil.copytree(pristine, dest)
    return dest


def packed_members(tar: Path) -> dict[str, dict[str, bytes]]:
    """key -> ext -> payload, as the standard library's tar reader finds them."""
    found: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as archive:
        for info in archive.getmembers():
            key, ext = info.name.split(".", 1)
            found.setdefault(key, {})[ext] = archive.extractfile(info).read()
    return found


def read_all(dest: Path) -> list[shardset.Record]:
    shard_set = open_shard_set(str(dest))
    index = load_index(shard_set, shard_set.manifest.shards[0])
    return list(read_samples(shard_set, index, 0, index.entry.samples))


def entries(dest: Path) -> list[list[IndexEntry]]:
    return ShardIndex(shardset.load_manifest(str(dest)).shards[0],
                      (dest / SHARD).with_suffix(".idx").read_text()).samples


def patch_header(tar: Path, entry: IndexEntry, at: int, value: bytes, fix_checksum: bool = True) -> None:
    """Overwrite bytes of `entry`'s tar header, then (unless told not to) make its checksum right
    again, so that only the intended field disagrees."""
    with open(tar, "r+b") as stream:
        stream.seek(entry.offset - BLOCK)
        head = bytearray(stream.read(BLOCK))
        head[at:at + len(value)] = value
        if fix_checksum:
            head[148:156] = b"%06o\0 " % (sum(head[:148]) + 8 * 32 + sum(head[156:]))
        stream.seek(entry.offset - BLOCK)
        stream.write(head)


def assert_as_packed(records, pristine: Path, bad: set[int]) -> None:
    """Exactly one Record per sample, in order; the `bad` ones carry errors naming the shard, the
    others the bytes and labels the undamaged shard holds."""
    packed = packed_members(pristine / SHARD)
    assert [r.key for r in records] == [f"{i:09d}" for i in range(len(records))]
    for number, record in enumerate(records):
        assert record.shard == SHARD
        if number in bad:
            assert record.error and record.image == b"" and record.labels is None
            continue
        members = packed[record.key]
        assert not record.error
        assert record.image == members[record.image_ext] and record.meta == members["json"]
        assert record.labels.tolist() == np.frombuffer(members["labels"], "<i4").tolist()


def test_records_hold_the_packed_members(pristine):
    assert_as_packed(read_all(pristine), pristine, bad=set())


@pytest.mark.parametrize("damage, message", [
    (lambda tar, e: patch_header(tar, e, 0, b"000000007"), "names '000000007."),
    (lambda tar, e: patch_header(tar, e, 136, b"7", fix_checksum=False), "checksum"),
    (lambda tar, e: patch_header(tar, e, 124, b"%011o" % (e.size - 1)), "gives"),
    (lambda tar, e: patch_header(tar, e, 257, b"xxxxx"), "not a ustar"),
    (lambda tar, e: patch_header(tar, e, 156, b"5"), "expected a regular file"),
], ids=["name", "checksum", "size", "magic", "type"])
@pytest.mark.parametrize("member", [0, 2])  # the image, the .labels
def test_a_header_disagreeing_with_the_index_spoils_only_its_sample(pristine, shards, damage, message,
                                                                    member):
    damage(shards / SHARD, entries(shards)[3][member])
    records = read_all(shards)
    assert message in records[3].error and "tar header" in records[3].error
    assert_as_packed(records, pristine, bad={3})


def test_truncated_shard_gives_error_records_from_the_cut(pristine, shards):
    cut = entries(shards)[5][0]  # in the middle of sample 5's image
    with open(shards / SHARD, "r+b") as stream:
        stream.truncate(cut.offset + cut.size // 2)
    shard_set = open_shard_set(str(shards))
    records = read_batch(shard_set, {}, [0] * 6, [7, 1, 2, 5, 6, 4])  # any order, runs split
    by_key = {r.key: r for r in records}
    assert [r.key for r in records] == [f"{i:09d}" for i in (7, 1, 2, 5, 6, 4)]
    for key in ("000000005", "000000006", "000000007"):
        assert "truncated" in by_key[key].error and by_key[key].shard == SHARD
    assert_as_packed(read_all(shards), pristine, bad={5, 6, 7})


class _Logged:
    """A shard stream that logs each read as (position, bytes asked)."""

    def __init__(self, stream, reads: list):
        self._stream, self._reads = stream, reads

    def read(self, size=-1):
        self._reads.append((self._stream.tell(), size))
        return self._stream.read(size)

    def seek(self, *args):
        return self._stream.seek(*args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


@dataclass(frozen=True)
class LoggedShardSet(ShardSet):
    reads: list = field(default_factory=list)

    def open(self, name):
        return _Logged(super().open(name), self.reads)


def logged(dest: Path) -> LoggedShardSet:
    plain = open_shard_set(str(dest))
    return LoggedShardSet(plain.root, plain.manifest)


def test_a_run_of_samples_is_one_read(shards):
    shard_set = logged(shards)
    index = load_index(shard_set, shard_set.manifest.shards[0])
    shard_set.reads.clear()
    records = read_batch(shard_set, {0: index}, [0] * 5, [6, 2, 3, 4, 0])  # runs 0, 2..4, 6
    assert [r.key for r in records] == [f"{i:09d}" for i in (6, 2, 3, 4, 0)]
    assert not any(r.error for r in records)
    def run(start, last):  # from the first member's header to the last member's data's end
        begin, end = index.samples[start][0].offset - BLOCK, index.samples[last][-1].offset
        return begin, end + index.samples[last][-1].size - begin
    assert shard_set.reads == [run(0, 0), run(2, 4), run(6, 6)]


def test_a_long_run_is_read_in_bounded_windows(pristine, monkeypatch):
    window = 8 * 1024  # a couple of samples of these tiny images
    monkeypatch.setattr(shardset, "WINDOW_BYTES", window)
    shard_set = logged(pristine)
    index = load_index(shard_set, shard_set.manifest.shards[0])
    shard_set.reads.clear()
    assert_as_packed(list(read_samples(shard_set, index, 0, COUNT)), pristine, bad=set())
    reads = shard_set.reads
    assert 2 <= len(reads) < COUNT and reads[0][0] == 0
    assert all(size <= window + 2 * BLOCK for _, size in reads)  # the last .json may cross it
    for (at, size), (following, _) in zip(reads, reads[1:]):  # back to back, padding between
        assert 0 <= following - (at + size) < BLOCK


def test_oversized_members_are_never_read(shards, monkeypatch):
    monkeypatch.setattr(shardset, "MAX_META_BYTES", 100)  # every .json is now above the limit
    shard_set = logged(shards)
    index = load_index(shard_set, shard_set.manifest.shards[0])
    records = list(read_samples(shard_set, index, 1, 4))
    for record, sample in zip(records, index.samples[1:4], strict=True):
        assert f"above the size limit: {sample[3].name}" in record.error
        assert not any(at < sample[3].offset + sample[3].size and sample[3].offset < at + size
                       for at, size in shard_set.reads), "a .json member's bytes were read"
    assert len(shard_set.reads) == 1 + 3  # the index, then a span per sample between the .jsons


def test_overlapping_index_entries_are_refused_naming_the_line(shards):
    idx = (shards / SHARD).with_suffix(".idx")
    lines = idx.read_text().splitlines()
    fields = lines[3].split()
    fields[5] = str(int(fields[1]) + 100)  # .cls data inside the image's
    lines[3] = " ".join(fields)
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardSetError, match=r"imaginet-000000.idx:4.*overlaps"):
        read_all(shards)


LONG = "d" * 120 + "/000000001.json"  # split into ustar's prefix and name fields


@pytest.mark.parametrize("name", ["000000001.json", LONG])
def test_member_header_check_accepts_what_the_writer_writes(name):
    check_member_header(member_header(name, 1234), name, 1234)
    with pytest.raises(ValueError, match="names"):
        check_member_header(member_header(name, 1234), name.replace("1", "2"), 1234)
    with pytest.raises(ValueError, match="gives 1234 bytes, the index 1235"):
        check_member_header(member_header(name, 1234), name, 1235)


def test_member_header_check_refuses_a_short_block():
    with pytest.raises(ValueError, match="100-byte tar header"):
        check_member_header(bytes(100), "a.json", 0)
    with pytest.raises(ValueError, match="checksum"):
        check_member_header(bytes(BLOCK), "a.json", 0)  # end-of-archive zeros
