"""verify: check a shard set against its manifest, member by member (and optionally decode every image).

Checks per shard: present, size and sha256 as recorded; a well-formed tar of regular files; samples
complete and in order (image, .cls, .labels, .json); `.labels`, `.cls` and `.json` agree; the image's
sha256 is the one recorded at packing; the `.idx` file lists exactly the tar's data offsets; sample
counts and label histograms match the manifest. On a tiled set (`retile`), every `.tiles` member
reassembles to the pixels whose sha256 the manifest records; given the source set, the tiled set
records that set's manifest, holds the same keys in the same shards and order, its tiles hold the
source images' decoded pixels and its other images are the source's bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import BinaryIO

from tqdm import tqdm

from imaginet_shards.codecs.tiles import decode_tiles, pixels_sha256
from imaginet_shards.format.annotations import LABEL_COLUMNS
from imaginet_shards.format.images import IMAGE_MEMBERS, ImageCheckError, check_image
from imaginet_shards.format.manifest import (
    Manifest,
    ShardEntry,
    label_histogram,
)
from imaginet_shards.format.members import MAX_META_BYTES, decode_labels, member_order_problem
from imaginet_shards.format.tar import IndexEntry, parse_index, split_member_name
from imaginet_shards.format.tiles import RETILE_KEY
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import (
    ShardSet,
    load_index,
    load_manifest,
    open_shard_set,
    read_samples,
    shard_set_root,
)


@dataclass(frozen=True)
class Problem:
    shard: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.shard}:{self.key}" if self.key else self.shard
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    manifest: Manifest
    shards_checked: int
    samples_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """The report as JSON-able data (what `verify --json` writes)."""
        return {"ok": self.ok, "shards_checked": self.shards_checked,
                "samples_checked": self.samples_checked, "bytes_checked": self.bytes_checked,
                "problems": [asdict(problem) for problem in self.problems]}


class _HashingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data

    def tell(self) -> int:
        return self.count

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a hashing reader only reads forward")

    def write(self, data: bytes) -> int:
        raise io.UnsupportedOperation("a hashing reader is read-only")

    def close(self) -> None:
        """The underlying stream belongs to the caller."""

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _samples(archive: tarfile.TarFile, problems: list, shard: str
             ) -> Iterator[tuple[str, list[tuple[str, bytes, IndexEntry]]]]:
    """Group the archive's members into samples by key (members of a sample are adjacent)."""
    key: str | None = None
    members: list[tuple[str, bytes, IndexEntry]] = []
    for info in archive:
        if not info.isreg():
            problems.append(Problem(shard, "", f"member {info.name!r} is not a regular file"))
            continue
        member_key, ext = split_member_name(info.name)
        limit = None if ext in IMAGE_MEMBERS else MAX_META_BYTES
        if limit is not None and info.size > limit:
            problems.append(Problem(shard, member_key, f"{info.name} is {info.size} bytes, too large"))
            continue
        payload = _payload(archive, info)
        if key is not None and member_key != key and members:
            yield key, members
            members = []
        key = member_key
        members.append((ext, payload, IndexEntry(ext, info.offset_data, info.size, info.name)))
    if key is not None and members:
        yield key, members


def _payload(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    stream = archive.extractfile(info)
    return b"" if stream is None else stream.read()


def _tile_problems(shard: str, key: str, ext: str, image: bytes, expected: str | None
                   ) -> list[Problem]:
    """Whether a tiled image reassembles to the pixels the manifest records for it."""
    if expected is None:
        return [Problem(shard, key, "tiled image without a pixel sha256 in the manifest")]
    if ext != "tiles":
        return [Problem(shard, key, f"the manifest records tiles, the sample holds a .{ext}")]
    try:
        if pixels_sha256(decode_tiles(image)) != expected:
            return [Problem(shard, key, "tiles do not reassemble to the recorded pixels")]
    except ValueError as exc:
        return [Problem(shard, key, f"tiles do not decode: {exc}")]
    return []


def _check_sample(shard: str, key: str, members: list, decode: bool, pixels: Mapping[str, str]
                  ) -> tuple[list[Problem], tuple | None]:
    problems = []
    exts = [m[0] for m in members]
    order = member_order_problem(exts)
    if order is not None:
        return [Problem(shard, key, order)], None
    image, cls, labels_raw, meta_raw = (m[1] for m in members)
    try:
        labels = tuple(int(v) for v in decode_labels(labels_raw))
    except ValueError as exc:
        return [Problem(shard, key, str(exc))], None
    try:
        meta = json.loads(meta_raw)
        meta_labels = tuple(int(meta["labels"][c]) for c in LABEL_COLUMNS)
    except (ValueError, KeyError, TypeError) as exc:
        return [Problem(shard, key, f".json unreadable: {exc}")], labels
    if meta_labels != labels:
        problems.append(Problem(shard, key, f".labels {labels} disagree with .json {meta_labels}"))
    if cls.strip() != str(labels[0]).encode():
        problems.append(Problem(shard, key, f".cls {cls!r} disagrees with origin {labels[0]}"))
    if hashlib.sha256(image).hexdigest() != meta.get("sha256"):
        problems.append(Problem(shard, key, "image sha256 differs from the one recorded at packing"))
    if exts[0] == "tiles" or key in pixels:
        problems += _tile_problems(shard, key, exts[0], image, pixels.get(key))
    if decode:
        try:
            info = check_image(image, decode=True)
            if (info.width, info.height) != (meta.get("width"), meta.get("height")):
                problems.append(Problem(shard, key, f"decoded {info.width}x{info.height}, .json "
                                                    f"says {meta.get('width')}x{meta.get('height')}"))
        except ImageCheckError as exc:
            problems.append(Problem(shard, key, f"image does not decode: {exc}"))
    return problems, labels


def verify_shard(root: str, entry: ShardEntry, decode: bool = False,
                 pixels: Mapping[str, str] | None = None) -> tuple[list[Problem], int]:
    """All problems of one shard, and the number of samples read; `pixels`: a tiled set's
    {key: sha256 of the decoded pixels}."""
    tar_url, idx_url = storage.join(root, entry.name), storage.join(root, entry.index)
    if not storage.exists(tar_url):
        return [Problem(entry.name, "", "shard file is missing")], 0
    problems: list[Problem] = []
    index_entries: list[list[IndexEntry]] = []
    labels: list[tuple] = []
    with storage.open_read(tar_url) as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for key, members in _samples(archive, problems, entry.name):
                    found, sample_labels = _check_sample(entry.name, key, members, decode,
                                                        pixels or {})
                    problems += found
                    index_entries.append([m[2] for m in members])
                    if sample_labels is not None:
                        labels.append(sample_labels)
        except (tarfile.TarError, EOFError, OSError) as exc:
            problems.append(Problem(entry.name, "", f"broken tar structure: {exc}"))
        reader.drain()
    if reader.count != entry.bytes:
        problems.append(Problem(entry.name, "", f"size {reader.count} != manifest {entry.bytes}"))
    elif reader.digest.hexdigest() != entry.sha256:
        problems.append(Problem(entry.name, "", "sha256 differs from the manifest"))
    if len(index_entries) != entry.samples:
        problems.append(Problem(entry.name, "", f"{len(index_entries)} samples, manifest says "
                                                f"{entry.samples}"))
    if label_histogram(labels) != entry.histogram:
        problems.append(Problem(entry.name, "", "label histogram differs from the manifest"))
    try:
        recorded = parse_index(storage.read_bytes(idx_url).decode(), entry.index)
        if recorded != index_entries:
            bad = next((i for i, (a, b) in enumerate(zip(recorded, index_entries)) if a != b),
                       min(len(recorded), len(index_entries)))
            problems.append(Problem(entry.index, "", f"index disagrees with the tar from sample "
                                                     f"{bad} on"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(Problem(entry.index, "", f"unreadable index: {exc}"))
    return problems, len(index_entries)


def compare_with_source(source: ShardSet, entry: ShardEntry, root: str, pixels: Mapping[str, str]
                        ) -> list[Problem]:
    """A tiled shard against the source shard of the same name: same keys in the same order, tiles
    holding the source image's decoded pixels, other images the source's bytes."""
    from imaginet_shards.augment.cpu import decode as decode_image  # here: it imports torch and OpenCV

    tiled = open_shard_set(root)
    found = next((e for e in source.manifest.shards if e.name == entry.name), None)
    if found is None:
        return [Problem(entry.name, "", "no shard of this name in the source set")]
    pairs = zip(read_samples(source, load_index(source, found), 0, found.samples),
                read_samples(tiled, load_index(tiled, entry), 0, entry.samples))
    problems = [] if found.samples == entry.samples else [
        Problem(entry.name, "", f"{entry.samples} samples, the source shard has {found.samples}")]
    for original, copy in pairs:
        if original.key != copy.key or original.error or copy.error:
            problems.append(Problem(entry.name, copy.key, original.error or copy.error or
                                    f"key differs from the source's {original.key}"))
        elif copy.key in pixels:
            try:
                same = pixels_sha256(decode_image(original.image).permute(1, 2, 0).numpy()) \
                    == pixels[copy.key]
            except ValueError as exc:
                problems.append(Problem(entry.name, copy.key, f"source image does not decode: {exc}"))
                continue
            if not same:
                problems.append(Problem(entry.name, copy.key, "tiles differ from the source pixels"))
        elif original.image != copy.image:
            problems.append(Problem(entry.name, copy.key, "image bytes differ from the source's"))
    return problems


def _source_problems(dest: str, manifest: Manifest, source: str, workers: int) -> list[Problem]:
    recipe = manifest.options.get(RETILE_KEY)
    if recipe is None:
        return [Problem(dest, "", "not a tiled shard set: nothing to compare with a source")]
    shards, root = open_shard_set(source), shard_set_root(dest)
    if shards.manifest.sha256 != recipe.get("source_manifest_sha256"):
        return [Problem(dest, "", f"derived from another shard set than {source} (manifest sha256)")]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda e: compare_with_source(shards, e, root, recipe["pixels_sha256"]),
                         manifest.shards)
        return [problem for problems in found for problem in problems]


def verify(dest: str, decode: bool = False, workers: int = 2, progress: bool = True,
           source: str | None = None) -> VerifyReport:
    """Verify every shard of the set at `dest` (directory or URL); for a tiled set, also against
    its `source` set when given."""
    manifest = load_manifest(dest)
    root = shard_set_root(dest)
    pixels = manifest.options.get(RETILE_KEY, {}).get("pixels_sha256", {})
    problems: list[Problem] = [] if source is None else _source_problems(dest, manifest, source,
                                                                          workers)
    samples = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda e: verify_shard(root, e, decode, pixels), manifest.shards)
        for found, count in tqdm(results, total=len(manifest.shards), desc="verify", unit="shard",
                                 disable=not progress):
            problems += found
            samples += count
    return VerifyReport(manifest, len(manifest.shards), samples,
                        sum(e.bytes for e in manifest.shards), tuple(problems))
