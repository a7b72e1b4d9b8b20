"""`perturb`: a new shard set with a preset (default `social`) applied once per sample, for testing
detectors on "social network" images.

Each sample's decisions come from `world.sample_rng(seed, key, None)`, and each output shard is made
from one input shard alone, so the output is byte-identical whatever the number of workers. Images
are stored as PNG, compression damage included: the reference compresses through OpenCV with red
and blue swapped, damage that no correctly coloured JPEG or WebP file can hold, and PNG keeps the
stored pixels equal to the loader's `social` preset. Keys, labels and shard boundaries are the source's;
each `.json` records the new image's sha256/size/format, the source key and sha256, and the applied
operations.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from imaginet_shards.augment.cpu import apply_ops, decode_for, encode
from imaginet_shards.augment.decisions import Op, ops_to_json
from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.errors import SampleError
from imaginet_shards.format.images import ImageInfo
from imaginet_shards.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    build_manifest,
    label_histogram,
)
from imaginet_shards.format.tar import ShardWriter
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import Record, ShardSet, load_index, open_shard_set, read_samples
from imaginet_shards.loaders.world import sample_rng
from imaginet_shards.ops.pack import PlannedSample, sample_members
from imaginet_shards.procs import process_pool

T = TypeVar("T")


@dataclass(frozen=True)
class PerturbOptions:
    """What `perturb` does: `source` (a shard set directory, manifest path or URL) to the local
    directory `out`, with `preset` and `seed`, in `workers` processes (1: in this process)."""

    source: str
    out: Path
    preset: str = "social"
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def render(data: bytes, preset: Preset, rng: np.random.Generator
           ) -> tuple[bytes, str, tuple[Op, ...]]:
    """(encoded bytes, format, operations) of one image perturbed by `preset` with decisions
    drawn from `rng`."""
    image, ops, remaining = decode_for(data, preset, rng)
    return encode(apply_ops(image, remaining), "png"), "png", ops


Members = list[tuple[str, bytes]]
Labels = tuple[int, int, int, int]
Rewrite = Callable[[Record, Labels], Members]  # (record, its labels) -> its new members


def rewrite_shard(shards: ShardSet, number: int, out: str, rewrite: Rewrite) -> dict:
    """Write shard `number` of `shards` into `out`, each sample's members given by
    `rewrite(record, labels)` (the tar under a temporary name, renamed once complete, its index
    beside it), and return its manifest entry as a dict. An unreadable sample, or one `rewrite`
    refuses with a ValueError, raises a SampleError naming shard and key. Runs in a worker."""
    entry = shards.manifest.shards[number]
    out_dir = Path(out)
    tmp = out_dir / f".{entry.name}.tmp"
    labels = []
    try:
        with open(tmp, "wb") as stream:
            writer = ShardWriter(stream)
            for record in read_samples(shards, load_index(shards, entry), 0, entry.samples):
                if record.error or record.labels is None:
                    raise SampleError(entry.name, record.key, record.error or "no labels")
                origin, content, family, generator = (int(v) for v in record.labels)
                sample_labels = (origin, content, family, generator)
                try:
                    members = rewrite(record, sample_labels)
                except ValueError as exc:
                    raise SampleError(entry.name, record.key, str(exc)) from None
                writer.add_sample(record.key, members)
                labels.append(sample_labels)
            size, digest, index = writer.close()
        storage.write_bytes(out_dir / entry.index, index.encode())
        os.replace(tmp, out_dir / entry.name)
    finally:
        tmp.unlink(missing_ok=True)
    return asdict(ShardEntry(entry.name, entry.index, len(labels), size, digest,
                             label_histogram(labels), entry.first_key))


def perturb_shard(shards: ShardSet, number: int, out: str, preset: Preset, seed: int) -> dict:
    """Write the perturbed copy of shard `number` (see `rewrite_shard`) and return its manifest
    entry as a dict. Runs in a worker process."""
    name = shards.manifest.shards[number].name

    def perturbed(record: Record, labels: Labels) -> Members:
        data, fmt, ops = render(record.image, preset, sample_rng(seed, record.key, None))
        source = json.loads(record.meta)
        planned = PlannedSample(record.key, source.get("path", ""), int(source.get("line", 0)),
                                labels, len(data))
        extra = {"source": {"key": record.key, "shard": name,
                            "sha256": hashlib.sha256(record.image).hexdigest()},
                 "perturbation": {"preset": preset.name, "seed": seed, "ops": ops_to_json(ops)}}
        return sample_members(record.key, data, ImageInfo(fmt, preset.size, preset.size),
                              planned, extra)

    return rewrite_shard(shards, number, out, perturbed)


def single_threaded_worker() -> None:
    """Process-pool initializer: torch on one thread."""
    # A forked child must not enter OpenMP regions that the parent's thread pool started
    # (libgomp deadlocks); as DataLoader workers do, keep torch to one thread.
    torch.set_num_threads(1)


def worker_map(function: Callable[..., T], columns: Sequence[Sequence[Any]], workers: int,
               stack: ExitStack) -> Iterator[T]:
    """`map(function, *columns)`, in this process for one worker, else in a process pool whose
    life `stack` bounds, whose workers die with this process (results in order either way)."""
    if workers == 1:
        return map(function, *columns)
    pool = stack.enter_context(process_pool(workers, initializer=single_threaded_worker))
    return pool.map(function, *columns)


def prepare_destination(dest: str | os.PathLike[str], source: ShardSet, overwrite: bool) -> Path:
    """The folder of a shard set derived from `source`, made ready: not the source itself, not an
    existing shard set unless `overwrite`, whose old manifest is then removed first (so that a
    half-written set never looks complete)."""
    out = Path(dest)
    if out.resolve() == Path(source.root).resolve():
        raise ValueError(f"{out}: the destination must differ from the source shard set")
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise ValueError(f"{out} already holds a shard set (manifest.json); pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    return out


def perturb(options: PerturbOptions) -> Manifest:
    """Write the perturbed shard set at options.out (manifest.json last) and return its manifest."""
    shards = open_shard_set(options.source)
    preset = get_preset(options.preset)
    out = prepare_destination(options.out, shards, options.overwrite)
    count = len(shards.manifest.shards)
    columns = ([shards] * count, range(count), [str(out)] * count, [preset] * count,
               [options.seed] * count)
    with ExitStack() as stack:
        results = worker_map(perturb_shard, columns, options.workers, stack)
        entries = [ShardEntry(**entry) for entry in tqdm(
            results, total=count, desc=f"perturb {out.name}", unit="shard",
            disable=not options.progress)]
    source = shards.manifest
    recipe = {"preset": preset.name, "seed": options.seed, "spec": repr(preset),
              "source_plan_sha256": source.plan_sha256}
    manifest = build_manifest(
        source.annotations, {**source.options, "perturb": recipe}, entries, source.skipped,
        hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest())
    storage.write_bytes(out / MANIFEST_NAME, manifest.to_json().encode())
    return manifest
