"""The sharder: annotated images → byte-exact WebDataset shards, DALI indexes and manifest.json.

Packing is planned up front (stratified, seeded sample order; shard boundaries from file sizes), then
each shard is written by a worker process under a temporary name and renamed when complete, with a
record of what it holds kept in `DEST/.imaginet-pack/`. A rerun keeps the shards whose record matches
the plan and redoes the rest; `manifest.json` is written last, so an incomplete set never has one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from imaginet_shards.errors import ImaginetError, PackError
from imaginet_shards.format.annotations import (
    ANNOTATION_FORMATS,
    LABEL_COLUMNS,
    read_annotations,
)
from imaginet_shards.format.images import ImageCheckError, ImageInfo, check_image
from imaginet_shards.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    Skipped,
    build_manifest,
    label_histogram,
)
from imaginet_shards.format.members import encode_members
from imaginet_shards.format.tar import ShardWriter
from imaginet_shards.io import storage
from imaginet_shards.ops.locate import RootFiles
from imaginet_shards.procs import process_pool

STATE_DIR = ".imaginet-pack"
PLAN_MARKER = "plan"
KEY_DIGITS = 9
MEMBER_OVERHEAD = 2560  # tar headers, padding, .cls/.labels/.json members: for shard size planning
_SKIP_HINT = "on_error='skip' (--on-error skip) leaves such files out and lists them in the manifest"


@dataclass(frozen=True)
class PackOptions:
    root: Path
    annotations: Path
    out: Path | str
    prefix: str = "imaginet"
    max_count: int = 2000
    max_size: int = 512 * 1024 * 1024
    workers: int = 2
    seed: int = 0
    on_error: Literal["raise", "skip"] = "raise"
    overwrite: bool = False
    progress: bool = True
    annotation_format: str = "imaginet"

    def __post_init__(self) -> None:
        if self.annotation_format not in ANNOTATION_FORMATS:
            raise ValueError(f"unknown annotation format {self.annotation_format!r}; choose one of "
                             f"{list(ANNOTATION_FORMATS)}")
        if self.max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {self.max_count}")
        if self.max_size < 1:
            raise ValueError(f"max_size must be positive, got {self.max_size}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if not self.prefix or any(c in self.prefix for c in "./\\ "):
            raise ValueError(f"prefix {self.prefix!r} must be non-empty without '.', '/', spaces")

    def recorded(self) -> dict:
        """The options that determine the shards' bytes (recorded in the manifest)."""
        return {"prefix": self.prefix, "max_count": self.max_count, "max_size": self.max_size,
                "seed": self.seed, "on_error": self.on_error}


@dataclass(frozen=True)
class PlannedSample:
    key: str
    path: str
    line: int
    labels: tuple[int, int, int, int]
    size: int


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    samples: tuple[PlannedSample, ...]
    fingerprint: str = field(default="")

    @property
    def index_name(self) -> str:
        return self.name[: -len(".tar")] + ".idx"


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which every label combination is spread evenly, so any contiguous
    slice (a shard) holds about the global label mix."""
    rng = np.random.default_rng(seed)
    _, stratum = np.unique(labels, axis=0, return_inverse=True)
    stratum = stratum.reshape(-1)
    position = np.empty(len(labels), dtype=np.float64)
    for s in range(int(stratum.max()) + 1 if len(stratum) else 0):
        members = np.flatnonzero(stratum == s)
        rank = rng.permutation(len(members))
        position[members] = (rank + rng.random(len(members))) / len(members)
    return np.lexsort((rng.random(len(labels)), position))


def split_shards(sizes: np.ndarray, max_count: int, max_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges: at most max_count samples and (unless a single sample is
    larger) about max_size planned bytes each."""
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        cost = int(size) + MEMBER_OVERHEAD
        if i > start and (i - start >= max_count or total + cost > max_size):
            ranges.append((start, i))
            start, total = i, 0
        total += cost
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def _fingerprint(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _locate(root: Path, frame: pd.DataFrame, on_error: str) -> tuple[pd.DataFrame, list[Skipped]]:
    """Attach file sizes; missing, unreadable or root-escaping files raise or become skip records."""
    files = RootFiles(root)
    sizes = np.full(len(frame), -1, dtype=np.int64)
    skipped = []
    for i, (path, line) in enumerate(zip(frame["path"].tolist(), frame["line"].tolist())):
        try:
            sizes[i] = files.size(path)
        except (OSError, ValueError) as exc:
            reason = f"missing or unreadable: {exc}" if isinstance(exc, OSError) else str(exc)
            if on_error == "raise":
                raise PackError(f"line {line}: {path}", reason, _SKIP_HINT) from None
            skipped.append(Skipped(path, line, reason))
    return frame.assign(size=sizes)[sizes >= 0], skipped


def plan_shards(frame: pd.DataFrame, options: PackOptions) -> list[ShardPlan]:
    """The full, deterministic shard plan for located rows (path, labels, line, size)."""
    labels = frame[list(LABEL_COLUMNS)].to_numpy(dtype=np.int64).reshape(-1, 4)
    order = stratified_order(labels, options.seed)
    ordered = frame.iloc[order]
    sizes = ordered["size"].to_numpy()
    # Plain Python values, row by row: pandas' per-row access costs more than the rest of planning.
    rows = list(zip(*(ordered[column].tolist() for column in ("path", "line", "size")),
                    map(tuple, labels[order].tolist())))
    plans = []
    for index, (start, stop) in enumerate(split_shards(sizes, options.max_count, options.max_size)):
        samples = tuple(PlannedSample(key=f"{i:0{KEY_DIGITS}d}", path=path, line=line, labels=row_labels,
                                      size=size)
                        for i, (path, line, size, row_labels) in zip(range(start, stop), rows[start:stop]))
        name = f"{options.prefix}-{index:06d}.tar"
        fingerprint = _fingerprint({"name": name, "options": options.recorded(),
                                    "samples": [vars(s) for s in samples]})  # asdict: slow
        plans.append(ShardPlan(index, name, samples, fingerprint))
    return plans


def sample_members(key: str, data: bytes, info: ImageInfo, sample: PlannedSample,
                   extra_meta: dict | None = None) -> list[tuple[str, bytes]]:
    """The tar members of one sample (`format.members`), with `extra_meta` merged into the .json
    (e.g. what `perturb` applied)."""
    meta = {"path": sample.path, "line": sample.line, "width": info.width, "height": info.height,
            **(extra_meta or {})}
    return encode_members(key, data, info.format, sample.labels, meta)


def write_shard(plan: ShardPlan, root: str, out: str, on_error: str) -> dict:
    """Write one shard (tar + idx under temporary names, then renamed or uploaded) and its state
    record. Runs in a worker process; returns the record."""
    root_dir = Path(root)
    # A local shard is written beside its final name, then renamed; a remote one is uploaded.
    staging = Path(tempfile.mkdtemp(prefix="imaginet-pack-")) if storage.is_remote(out) else Path(out)
    tmp_tar = staging / f".{plan.name}.tmp"
    tmp_idx = staging / f".{plan.index_name}.tmp"
    skipped, labels, first_key = [], [], ""
    try:
        with open(tmp_tar, "wb") as stream:
            writer = ShardWriter(stream)
            for sample in plan.samples:
                try:
                    data = (root_dir / sample.path).read_bytes()
                    info = check_image(data)
                    if info.format == "tiles":
                        raise ImageCheckError("a tiled-layout image (retile's output), not a source image")
                except (OSError, ImageCheckError) as exc:
                    if on_error == "raise":
                        raise PackError(f"line {sample.line}: {sample.path}", str(exc),
                                        _SKIP_HINT) from None
                    skipped.append(asdict(Skipped(sample.path, sample.line, str(exc))))
                    continue
                writer.add_sample(sample.key, sample_members(sample.key, data, info, sample))
                labels.append(sample.labels)
                first_key = first_key or sample.key
            size, digest, index = writer.close()
        tmp_idx.write_text(index)
        storage.put_file(tmp_idx, storage.join(out, plan.index_name))
        storage.put_file(tmp_tar, storage.join(out, plan.name))
    finally:
        for tmp in (tmp_tar, tmp_idx):
            tmp.unlink(missing_ok=True)
        if staging != Path(out):
            staging.rmdir()
    entry = ShardEntry(plan.name, plan.index_name, len(labels), size, digest,
                       label_histogram(labels), first_key)
    record = {"fingerprint": plan.fingerprint, "entry": asdict(entry), "skipped": skipped}
    storage.write_bytes(_state(out, f"{plan.name}.json"), json.dumps(record, sort_keys=True).encode())
    return record


def _state(out: str, name: str) -> str:
    return storage.join(out, f"{STATE_DIR}/{name}")


def _sha256_stream(stream) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _reusable(out: str, plan: ShardPlan) -> dict | None:
    """The state record of a shard already written for this exact plan and still intact (size for
    remote shards; size and sha256 for local ones)."""
    try:
        record = json.loads(storage.read_bytes(_state(out, f"{plan.name}.json")))
        entry = record["entry"]
        tar = storage.join(out, plan.name)
        if (record["fingerprint"] != plan.fingerprint
                or not storage.exists(storage.join(out, plan.index_name))
                or storage.size(tar) != entry["bytes"]):
            return None
        if not storage.is_remote(out):
            with storage.open_read(tar) as stream:
                if _sha256_stream(stream) != entry["sha256"]:
                    return None
        return record
    except (OSError, ValueError, KeyError):
        return None


def _prepare_destination(out: str, options: PackOptions, plan_sha: str) -> Manifest | None:
    """Refuse to clobber a different shard set; return the existing manifest if it is this one."""
    if not storage.is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    manifest_path = storage.join(out, MANIFEST_NAME)
    ours = [n for n in storage.list_names(out)
            if n.startswith(f"{options.prefix}-") and n.endswith((".tar", ".idx"))]
    started = storage.exists(_state(out, PLAN_MARKER))
    if storage.exists(manifest_path):
        existing = Manifest.from_json(storage.read_bytes(manifest_path).decode(), manifest_path)
        if existing.plan_sha256 == plan_sha:
            return existing
        if not options.overwrite:
            raise PackError(out, "already holds a different shard set (manifest.json from other "
                                 "inputs or options)", "pass --overwrite to replace it")
    elif ours and not started and not options.overwrite:
        raise PackError(out, f"holds {len(ours)} shard files from an unknown pack (no manifest, "
                             f"no {STATE_DIR}/)", "pass --overwrite to replace them")
    if options.overwrite:
        storage.remove(manifest_path)
    if not storage.is_remote(out):
        Path(out, STATE_DIR).mkdir(exist_ok=True)
    storage.write_bytes(_state(out, PLAN_MARKER), plan_sha.encode())
    return None


def _clear_state(out: str) -> None:
    for name in storage.list_names(storage.join(out, STATE_DIR)):
        storage.remove(_state(out, name))
    if not storage.is_remote(out):
        shutil.rmtree(Path(out, STATE_DIR), ignore_errors=True)


def pack(options: PackOptions) -> Manifest:
    """Pack the annotated images under options.root into a shard set at options.out (a directory
    or an s3://, gs:// URL prefix)."""
    root, out = Path(options.root), str(options.out)
    if not root.is_dir():
        raise PackError(str(root), "the dataset root is not a directory")
    frame = read_annotations(options.annotations, annotation_format=options.annotation_format)
    duplicates = [Skipped(path, line, f"duplicate of line {first}")
                  for line, path, first in frame.attrs["duplicates"]]
    located, skipped = _locate(root, frame, options.on_error)
    skipped = duplicates + skipped
    plans = plan_shards(located, options)
    with open(options.annotations, "rb") as stream:
        annotations = {"name": Path(options.annotations).name, "sha256": _sha256_stream(stream),
                       "rows": len(frame) + len(duplicates), "format": options.annotation_format}
    plan_sha = _fingerprint({"annotations": annotations, "shards": [p.fingerprint for p in plans],
                             "skipped": [asdict(s) for s in skipped]})
    existing = _prepare_destination(out, options, plan_sha)
    if existing is not None:
        return existing

    records: dict[int, dict] = {}
    todo = []
    for plan in plans:
        record = _reusable(out, plan)
        if record is None:
            todo.append(plan)
        else:
            records[plan.index] = record
    planned = {p.name for p in plans} | {p.index_name for p in plans}
    for name in storage.list_names(out):
        if name.startswith(f"{options.prefix}-") and name.endswith((".tar", ".idx")) \
                and name not in planned:
            storage.remove(storage.join(out, name))

    bar = tqdm(total=sum(s.size for p in todo for s in p.samples), unit="B", unit_scale=True,
               desc=f"pack {out}", disable=not options.progress)
    with process_pool(min(options.workers, max(1, len(todo)))) as pool:
        futures = {pool.submit(write_shard, plan, str(root), out, options.on_error): plan
                   for plan in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                plan = futures[future]
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    bar.close()
                    if isinstance(error, ImaginetError):
                        raise error
                    raise PackError(plan.name, f"{type(error).__name__}: {error}") from error
                records[plan.index] = future.result()
                bar.update(sum(s.size for s in plan.samples))
    bar.close()

    entries = [ShardEntry(**records[p.index]["entry"]) for p in plans]
    skipped += [Skipped(**s) for p in plans for s in records[p.index]["skipped"]]
    manifest = build_manifest(annotations, options.recorded(), entries, skipped, plan_sha)
    storage.write_bytes(storage.join(out, MANIFEST_NAME), manifest.to_json().encode())
    _clear_state(out)
    return manifest
