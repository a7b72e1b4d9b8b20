"""Reading a shard set: resolve a source to its manifest, open shards, and read sample ranges.

`ShardSet.open` is the one place a shard's bytes are opened (streamed, or through the local cache);
`read_samples` reads samples [start, stop) of one shard, `read_batch` any samples in any order, by
seeking straight to each run of them with the DALI index offsets and parsing the tar with webdataset's tar iterator (never its decoders: no
member is unpickled or decoded here). Every failure is reported per sample, naming shard and key,
so callers decide whether to raise or to skip without ever shifting labels.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imaginet_shards.errors import MissingShardSetError, ShardSetError
from imaginet_shards.format.images import IMAGE_MEMBERS, MAX_FILE_BYTES
from imaginet_shards.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from imaginet_shards.format.members import MAX_META_BYTES, decode_labels
from imaginet_shards.format.tar import (
    BLOCK,
    IndexEntry,
    padding,
    parse_index,
    split_member_name,
)
from imaginet_shards.io import storage
from imaginet_shards.io.cache import DEFAULT_CACHE_BYTES, ShardCache

log = logging.getLogger(__name__)


def load_manifest(dest: str) -> Manifest:
    """Read DEST/manifest.json (DEST a directory or URL, or the manifest's own path)."""
    dest = str(dest)
    location = dest if dest.endswith(".json") else storage.join(dest, MANIFEST_NAME)
    if not storage.exists(location):
        raise MissingShardSetError(location, "no manifest.json; not a complete imaginet shard set",
                                   hint="packing unfinished, or the wrong directory")
    try:
        text = storage.read_bytes(location).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShardSetError(location, f"not a valid imaginet manifest: {exc}") from None
    return Manifest.from_json(text, source=location)


def shard_set_root(dest: str) -> str:
    """The directory or URL prefix holding a shard set, given it or its manifest path."""
    dest = str(dest).rstrip("/")
    return dest.rsplit("/", 1)[0] if dest.endswith(".json") else dest


@dataclass(frozen=True)
class ShardSet:
    """A complete shard set: where it lives, its manifest, and the local cache remote shards go
    through (`cache`, for remote shard sets opened with a cache directory). `close()` stops the
    cache's prefetching."""

    root: str
    manifest: Manifest
    cache: ShardCache | None = None

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    @property
    def counts(self) -> tuple[int, ...]:
        """Samples per shard, in manifest order (what `world.rank_order` partitions)."""
        return tuple(s.samples for s in self.manifest.shards)

    @property
    def cached(self) -> bool:
        """Remote shards are read from the local cache (downloaded whole on first use)."""
        return self.cache is not None

    def location(self, name: str) -> str:
        return storage.join(self.root, name)

    def local_path(self, name: str) -> str:
        """A path for readers that need one (DALI): the cached copy of a remote shard, or the shard
        itself."""
        if self.cache is not None:
            return str(self.cache.fetch(self.location(name)))
        return self.location(name)

    def prefetch(self, names: list[str]) -> None:
        """Start filling the cache with `names`, in order (no-op without a cache)."""
        if self.cache is not None:
            self.cache.prefetch([self.location(n) for n in names])

    def open(self, name: str) -> BinaryIO:
        """A seekable binary stream over one shard: the one place shard bytes are opened."""
        if self.cached:
            return open(self.local_path(name), "rb")
        return storage.open_read(self.location(name))


def open_shard_set(source: str, cache_dir: str | None = None,
                   cache_bytes: int = DEFAULT_CACHE_BYTES) -> ShardSet:
    """A shard set from its directory, its manifest.json path, or a URL of either; a remote one
    reads through a local cache in `cache_dir` when given."""
    source = str(source)
    root = shard_set_root(source)
    cache = None
    if cache_dir is not None and storage.is_remote(root):
        cache = ShardCache(cache_dir, cache_bytes)
        log.info("remote shards go through the local cache %s (at most %d bytes)", cache_dir, cache_bytes)
    return ShardSet(root, load_manifest(source), cache)


@dataclass(frozen=True)
class Record:
    """One sample as read from a shard: its image bytes and labels, or why it is unusable."""

    shard: str
    key: str
    image: bytes = b""
    image_ext: str = ""
    labels: np.ndarray | None = None
    meta: bytes = b""
    error: str = ""


class ShardIndex:
    """A shard's DALI index: members per sample and the byte span of each sample in the tar."""

    def __init__(self, entry: ShardEntry, text: str):
        self.entry = entry
        self.samples: list[list[IndexEntry]] = parse_index(text, entry.index)
        if len(self.samples) != entry.samples:
            raise ShardSetError(entry.index, f"lists {len(self.samples)} samples, the manifest says "
                                             f"{entry.samples} for {entry.name}")
        self.oversized = frozenset(
            e.name for sample in self.samples for e in sample
            if e.size > (MAX_FILE_BYTES if e.ext in IMAGE_MEMBERS else MAX_META_BYTES))

    def key(self, i: int) -> str:
        return split_member_name(self.samples[i][0].name)[0]

    def begin(self, i: int) -> int:
        """Offset of sample i's first header: the end of sample i-1 (0 for the first)."""
        return 0 if i == 0 else self.end(i - 1)

    def end(self, i: int) -> int:
        """Offset just past sample i's last member data (padded to the tar block)."""
        last = self.samples[i][-1]
        return last.offset + last.size + padding(last.size, BLOCK)


def load_index(shards: ShardSet, entry: ShardEntry) -> ShardIndex:
    """The parsed `.idx` of one shard (through the cache, like the shard, when there is one)."""
    with shards.open(entry.index) as stream:
        data = stream.read()
    try:
        return ShardIndex(entry, data.decode("ascii"))
    except UnicodeDecodeError as exc:
        raise ShardSetError(entry.index, f"not an ASCII index file: {exc}") from None


class _Window:
    """Reads bytes [begin, end) of a seekable stream: a tar parser sees only the wanted samples."""

    def __init__(self, stream: BinaryIO, begin: int, end: int, name: str):
        stream.seek(begin)
        self._stream, self._left, self._name = stream, end - begin, name

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        return data

    def __repr__(self) -> str:  # webdataset appends the stream's repr to its error messages
        return self._name


def read_samples(shards: ShardSet, index: ShardIndex, start: int, stop: int) -> Iterator[Record]:
    """Records of samples [start, stop) of one shard, in order, exactly one per sample.

    A sample whose members are missing, misnamed or unreadable (truncated shard, bad header) gets
    a Record with `error` set; reading resumes at the next sample's indexed offset.
    """
    with shards.open(index.entry.name) as stream:
        yield from _read_run(stream, index, start, stop)


def read_batch(shards: ShardSet, indexes: dict[int, ShardIndex],
               shard_ids: Sequence[int] | np.ndarray, samples: Sequence[int] | np.ndarray
               ) -> list[Record]:
    """The Records of samples (`shard_ids[i]`, `samples[i]`) (shard numbers in manifest order), in
    that order: each shard is opened once and each run of consecutive samples read in one window.
    Indexes not yet in `indexes` are loaded into it."""
    shard_ids, samples = np.asarray(shard_ids, dtype=np.int64), np.asarray(samples, dtype=np.int64)
    found: dict[tuple[int, int], Record] = {}
    for shard in np.unique(shard_ids).tolist():
        if shard not in indexes:
            indexes[shard] = load_index(shards, shards.manifest.shards[shard])
        index = indexes[shard]
        with shards.open(index.entry.name) as stream:
            for start, stop in _runs(np.unique(samples[shard_ids == shard]).tolist()):
                for number, record in enumerate(_read_run(stream, index, start, stop), start):
                    found[shard, number] = record
    return [found[s, n] for s, n in zip(shard_ids.tolist(), samples.tolist())]


def _runs(numbers: list[int]) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of consecutive integers in sorted, non-empty `numbers`."""
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n != prev + 1:
            yield start, prev + 1
            start = n
        prev = n
    yield start, prev + 1


def _read_run(stream: BinaryIO, index: ShardIndex, start: int, stop: int) -> Iterator[Record]:
    from webdataset.tariterators import tar_file_iterator  # webdataset imports torch: load only

    name = index.entry.name
    i = start
    while i < stop:
        window = _Window(stream, index.begin(i), index.end(stop - 1), name)
        members = tar_file_iterator(window, skip_meta=None,
                                    select_files=lambda n: n not in index.oversized)
        try:
            while i < stop:
                yield _record(name, index, i, members)
                i += 1
        except Exception as exc:  # tarfile and webdataset raise many types for broken tars
            yield Record(name, index.key(i),
                         error=f"unreadable tar data (truncated or corrupt shard?): {exc}")
            i += 1


def _record(shard: str, index: ShardIndex, i: int, members: Iterator[dict]) -> Record:
    """Consume sample i's members (as the index lists them; oversized ones are never read) and
    check them."""
    key, expected = index.key(i), index.samples[i]
    found: dict[str, bytes] = {}
    for entry in expected:
        if entry.name in index.oversized:
            continue
        member = next(members, None)
        if member is None:
            return Record(shard, key, error=f"shard ends before member {entry.name} (truncated?)")
        if member["fname"] != entry.name:
            raise ValueError(f"tar holds {member['fname']!r} where the index says {entry.name!r}")
        found[entry.ext] = member["data"]
    too_big = [f"{e.name} ({e.size} bytes)" for e in expected if e.name in index.oversized]
    if too_big:
        return Record(shard, key, error=f"member above the size limit: {', '.join(too_big)}")
    images = [ext for ext in found if ext in IMAGE_MEMBERS]
    if len(images) != 1:
        return Record(shard, key, error=f"expected one image member, found {len(images)}")
    if "labels" not in found:
        return Record(shard, key, error="missing .labels member")
    try:
        labels = decode_labels(found["labels"])
    except ValueError as exc:
        return Record(shard, key, error=str(exc))
    return Record(shard, key, found[images[0]], images[0], labels, found.get("json", b""))
