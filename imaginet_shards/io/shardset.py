"""Reading a shard set: resolve a source to its manifest, open shards, and read sample ranges.

`ShardSet.open` is the one place a shard's bytes are opened (streamed, or through the local cache);
`read_samples` reads samples [start, stop) of one shard, `read_batch` any samples in any order, by
reading each run of them in one read (a window of up to WINDOW_BYTES) through the DALI index
offsets and checking every member's tar header against the index (no tar parser; nothing is
unpickled or decoded here). Every failure is reported per sample, naming shard and key, so callers
decide whether to raise or to skip without ever shifting labels.

Given `ShardFiles` (the CPU backend's opt-in), `read_batch` leaves the tiles of `.tiles` members in
shards that are local files (local sets, cached remote ones) unread: such a record's image is a
`TiledImage` (`Record.tiled`), its tar and tile headers checked, from which a crop's decoder reads
only the tiles it covers while the files stay open.
"""
from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from imaginet_shards.errors import MissingShardSetError, ShardSetError
from imaginet_shards.format.images import IMAGE_MEMBERS, MAX_FILE_BYTES, MAX_PIXELS
from imaginet_shards.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from imaginet_shards.format.members import MAX_META_BYTES, decode_labels
from imaginet_shards.format.tar import (
    BLOCK,
    IndexEntry,
    check_member_header,
    parse_index,
    split_member_name,
)
from imaginet_shards.format.tiles import TiledImage, TileHeaderError, header_size, read_header
from imaginet_shards.io import storage
from imaginet_shards.io.cache import DEFAULT_CACHE_BYTES, ShardCache

log = logging.getLogger(__name__)
WINDOW_BYTES = 32 << 20  # a run of samples is read in windows of about this many bytes
# Bytes of a lazily read `.tiles` member read along with its tar header: its whole tile header up to
# 249 tiles (a 2000 x 2000 image in 128-pixel tiles); a longer one takes a second read.
TILES_PREFIX = 1024


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

    def open_local(self, name: str) -> BinaryIO | None:
        """The shard as an unbuffered local file (for `os.pread`), where it is one: the shard of a
        local set, or a remote shard's cached copy; None for a streamed remote shard."""
        if not self.cached and storage.is_remote(self.root):
            return None
        return open(self.local_path(name), "rb", buffering=0)


class ShardFiles:
    """The local shard files one batch's lazily read images come from (`read_batch`'s `files`):
    each opened on first use, in the process that reads the batch (never inherited through a fork),
    and all closed by `close()` or the end of a `with` block, once the batch is decoded."""

    def __init__(self, shards: ShardSet):
        self._shards = shards
        self._files: dict[str, BinaryIO | None] = {}

    def get(self, name: str) -> BinaryIO | None:
        """Shard `name` opened locally, or None when it is streamed (then read eagerly)."""
        if name not in self._files:
            self._files[name] = self._shards.open_local(name)
        return self._files[name]

    def close(self) -> None:
        for file in self._files.values():
            if file is not None:
                file.close()
        self._files.clear()

    def __enter__(self) -> ShardFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """One sample as read from a shard: its image bytes and labels, or why it is unusable. A
    `.tiles` image read lazily (`read_batch` with `files`) is `tiled` instead, `image` empty."""

    shard: str
    key: str
    image: bytes = b""
    image_ext: str = ""
    labels: np.ndarray | None = None
    meta: bytes = b""
    error: str = ""
    tiled: TiledImage | None = None


class ShardIndex:
    """A shard's DALI index: members per sample (name, data offset and size of each), checked to
    follow one another in the tar; `oversized` names the members above the size limits."""

    def __init__(self, entry: ShardEntry, text: str):
        self.entry = entry
        self.samples: list[list[IndexEntry]] = parse_index(text, entry.index)
        if len(self.samples) != entry.samples:
            raise ShardSetError(entry.index, f"lists {len(self.samples)} samples, the manifest says "
                                             f"{entry.samples} for {entry.name}")
        _check_layout(self.samples, entry.index)
        self.oversized = frozenset(
            e.name for sample in self.samples for e in sample
            if e.size > (MAX_FILE_BYTES if e.ext in IMAGE_MEMBERS else MAX_META_BYTES))

    def key(self, i: int) -> str:
        return split_member_name(self.samples[i][0].name)[0]


def _check_layout(samples: list[list[IndexEntry]], source: str) -> None:
    """ShardSetError naming the index line whose members do not follow one another, each after
    its own header: readers trust these offsets to cut members out of a window."""
    end = 0
    for number, sample in enumerate(samples, start=2):
        for e in sample:
            if e.size < 0 or e.offset < end + BLOCK:
                raise ShardSetError(f"{source}:{number}", f"member {e.name} at offset {e.offset} "
                                    "overlaps the member before it or its own header")
            end = e.offset + e.size


def load_index(shards: ShardSet, entry: ShardEntry) -> ShardIndex:
    """The parsed `.idx` of one shard (through the cache, like the shard, when there is one)."""
    with shards.open(entry.index) as stream:
        data = stream.read()
    try:
        return ShardIndex(entry, data.decode("ascii"))
    except UnicodeDecodeError as exc:
        raise ShardSetError(entry.index, f"not an ASCII index file: {exc}") from None


def read_samples(shards: ShardSet, index: ShardIndex, start: int, stop: int) -> Iterator[Record]:
    """Records of samples [start, stop) of one shard, in order, exactly one per sample.

    A sample whose members are missing, misnamed or unreadable (truncated shard, bad header) gets
    a Record with `error` set; reading resumes at the next sample's indexed offset.
    """
    with shards.open(index.entry.name) as stream:
        yield from _read_run(stream, index, start, stop)


def read_batch(shards: ShardSet, indexes: dict[int, ShardIndex],
               shard_ids: Sequence[int] | np.ndarray, samples: Sequence[int] | np.ndarray,
               files: ShardFiles | None = None) -> list[Record]:
    """The Records of samples (`shard_ids[i]`, `samples[i]`) (shard numbers in manifest order), in
    that order: each shard is opened once and each run of consecutive samples read in one window
    (up to WINDOW_BYTES). Indexes not yet in `indexes` are loaded into it. With `files`, `.tiles`
    members of shards it opens locally are read lazily (`Record.tiled`, valid until it closes)."""
    shard_ids, samples = np.asarray(shard_ids, dtype=np.int64), np.asarray(samples, dtype=np.int64)
    found: dict[tuple[int, int], Record] = {}
    for shard in np.unique(shard_ids).tolist():
        if shard not in indexes:
            indexes[shard] = load_index(shards, shards.manifest.shards[shard])
        index = indexes[shard]
        local = files.get(index.entry.name) if files is not None else None
        with shards.open(index.entry.name) if local is None else nullcontext(local) as stream:
            for start, stop in _runs(np.unique(samples[shard_ids == shard]).tolist()):
                for number, record in enumerate(_read_run(stream, index, start, stop, local), start):
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


def _read_run(stream: BinaryIO, index: ShardIndex, start: int, stop: int,
              lazy: BinaryIO | None = None) -> Iterator[Record]:
    """Records of samples [start, stop), read window by window: each window's members in one read
    per span (`_spans`), then each sample cut out of them and checked on its own. `lazy`: the local
    file `stream` is, whose `.tiles` members are left unread but for their headers."""
    while start < stop:
        end = _window_stop(index, start, stop)
        chunks = _Chunks(stream, _spans(index, start, end, lazy is not None))
        for i in range(start, end):
            yield _record(index.entry.name, index, i, chunks, lazy)
        start = end


def _window_stop(index: ShardIndex, start: int, stop: int) -> int:
    """The end of the window of samples from `start`: as many as fit WINDOW_BYTES (at least one),
    so that reading a whole shard never holds more than that in memory."""
    first = index.samples[start][0].offset
    end = start + 1
    while end < stop and index.samples[end][-1].offset - first < WINDOW_BYTES:
        end += 1
    return end


def _spans(index: ShardIndex, start: int, stop: int, lazy: bool = False) -> list[tuple[int, int]]:
    """[begin, end) byte spans holding the headers and data of samples [start, stop)'s members:
    one span for the run, split only around oversized members (never read) and, when `lazy`, the
    tiles of `.tiles` members (of which only TILES_PREFIX bytes are read). Tar padding between
    members (under a block) is read along rather than splitting a span."""
    spans: list[list[int]] = []
    for sample in index.samples[start:stop]:
        for entry in sample:
            if entry.name in index.oversized:
                continue
            begin, end = entry.offset - BLOCK, entry.offset + _read_size(entry, lazy)
            if spans and begin - spans[-1][1] < BLOCK:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([begin, end])
    return [(begin, end) for begin, end in spans]


class _Chunks:
    """The bytes of some spans of a stream, read at once: each span in one read (less where the
    stream ends early), then served as memoryview slices without copying."""

    def __init__(self, stream: BinaryIO, spans: list[tuple[int, int]]):
        self._begins = [begin for begin, _ in spans]
        self._data = []
        for begin, end in spans:
            stream.seek(begin)
            self._data.append(memoryview(_read_up_to(stream, end - begin)))

    def get(self, begin: int, end: int) -> memoryview | None:
        """Bytes [begin, end) of the stream, or None when the stream ends before `end`."""
        chunk = bisect.bisect_right(self._begins, begin) - 1
        if chunk < 0:
            return None
        data, base = self._data[chunk], self._begins[chunk]
        return data[begin - base:end - base] if end - base <= len(data) else None


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """`size` bytes from the stream's position (one read on a local file), fewer only where it
    ends."""
    parts: list[bytes] = []
    while size > 0 and (part := stream.read(size)):
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_size(entry: IndexEntry, lazy: bool) -> int:
    """How many of `entry`'s bytes are read with its tar header."""
    return min(entry.size, TILES_PREFIX) if lazy and entry.ext == "tiles" else entry.size


def _record(shard: str, index: ShardIndex, i: int, chunks: _Chunks,
            lazy: BinaryIO | None = None) -> Record:
    """Sample i's members (as the index lists them; oversized ones are never read), each checked
    against its tar header, then the sample against the layout: one image, a well-formed .labels.
    With `lazy` (the local shard file), a `.tiles` member becomes a TiledImage once its header is
    checked."""
    key, expected = index.key(i), index.samples[i]
    too_big = [f"{e.name} ({e.size} bytes)" for e in expected if e.name in index.oversized]
    if too_big:
        return Record(shard, key, error=f"member above the size limit: {', '.join(too_big)}")
    found: dict[str, memoryview] = {}
    tiled = None
    for entry in expected:
        member = chunks.get(entry.offset - BLOCK, entry.offset + _read_size(entry, lazy is not None))
        if member is None:
            return Record(shard, key, error=f"shard ends before the end of member {entry.name} "
                                            "(truncated?)")
        try:
            check_member_header(member[:BLOCK], entry.name, entry.size)
            if lazy is not None and entry.ext == "tiles":
                tiled = _tiled_image(lazy, entry, member[BLOCK:])
        except ValueError as exc:
            return Record(shard, key, error=f"member {entry.name}: {exc}")
        found[entry.ext] = member[BLOCK:]
    images = [ext for ext in found if ext in IMAGE_MEMBERS]
    if len(images) != 1:
        return Record(shard, key, error=f"expected one image member, found {len(images)}")
    if "labels" not in found:
        return Record(shard, key, error="missing .labels member")
    try:
        labels = decode_labels(bytes(found["labels"]))
    except ValueError as exc:
        return Record(shard, key, error=str(exc))
    return Record(shard, key, bytes(found[images[0]]) if tiled is None else b"", images[0], labels,
                  bytes(found.get("json", b"")), tiled=tiled)


def _tiled_image(file: BinaryIO, entry: IndexEntry, prefix: memoryview) -> TiledImage:
    """The `.tiles` member `entry` of the local shard `file` as a TiledImage, from its first bytes
    (`prefix`), read further (one pread) where its header is longer; ValueError when bad."""
    size = header_size(prefix, entry.size, MAX_PIXELS)
    if size > len(prefix):
        prefix = memoryview(os.pread(file.fileno(), size, entry.offset))
        if len(prefix) < size:
            raise TileHeaderError(f"the shard ends {size - len(prefix)} bytes before the end of the "
                                  "tile header (truncated after its index was read?)")
    return TiledImage(read_header(prefix, MAX_PIXELS, entry.size), file, entry.offset)
