"""The CPU backend: members read through the index offsets, OpenCV perturbations, DataLoader workers.

The rank delivers `world.rank_order` (the same samples and batches as the DALI backend): DataLoader
worker w makes batches w, w + workers, ... (the DataLoader hands them over in order), reading each
batch's samples through the index offsets (`io.shardset.read_batch`), decoding and perturbing them
(decisions keyed by (seed, epoch, key): independent of worker count) and shipping whole batches
with labels and keys (uint8 images, normalised by the main process on the training device). Any
batch can be made without reading the ones before it, which is what makes resuming
(`load_state_dict`) cost nothing but the index. Unusable samples travel as tombstones through the
buffer, so batch counts never change: with `on_error="skip"` a batch is just smaller, and the
skipped samples are listed in `loader.skipped`; with "raise" the main process raises a SampleError
naming shard and key (workers never raise for bad data, so no worker traceback wraps the error).
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imaginet_shards.augment.cpu import augment, normalize
from imaginet_shards.codecs.png import load_kernel
from imaginet_shards.errors import SampleError
from imaginet_shards.io.shardset import Record, ShardFiles, ShardIndex, ShardSet, read_batch
from imaginet_shards.loaders.base import EpochLoader, LoaderConfig, SkippedSample
from imaginet_shards.loaders.world import Leg, RankOrder, rank_order, sample_rng
from imaginet_shards.procs import WorkerGuard, before_fork

MAX_LEGS = 64  # interruptions of one epoch the shared position can hold


class Batch(NamedTuple):
    """A batch with the keys of its samples (what `CpuLoader.batches` yields)."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]


class _Item(NamedTuple):
    key: str
    image: torch.Tensor | None  # uint8 [3, S, S]; None for a tombstone
    labels: np.ndarray | None
    shard: str
    error: str


def _prepare(record: Record, config: LoaderConfig, epoch: int) -> _Item:
    """Decode and perturb one record; a failure becomes a tombstone carrying the reason."""
    if record.error:
        return _Item(record.key, None, None, record.shard, record.error)
    rng = sample_rng(config.seed, record.key, None if config.preset.per_sample_seed else epoch)
    try:
        image = record.image if record.tiled is None else record.tiled
        return _Item(record.key, augment(image, config.preset, rng), record.labels, record.shard, "")
    except ValueError as exc:
        return _Item(record.key, None, None, record.shard, str(exc))


def _collate(items: list[_Item], size: int, epoch: int):
    """(uint8 images [n,3,S,S] tensor, int64 labels [n,4] array, keys, skipped records) of a batch."""
    kept = [(item.key, item.image, item.labels) for item in items
            if item.image is not None and item.labels is not None]
    images = (torch.stack([image for _, image, _ in kept]) if kept
              else torch.empty((0, 3, size, size), dtype=torch.uint8))
    labels = np.stack([label for _, _, label in kept]) if kept else np.empty((0, 4), dtype=np.int64)
    skipped = [SkippedSample(i.shard, i.key, i.error, epoch) for i in items if i.image is None]
    return images, labels, [key for key, _, _ in kept], skipped


def worker_batches(shards: ShardSet, config: LoaderConfig, order: RankOrder, epoch: int,
                   worker: int, workers: int) -> Iterator[tuple]:
    """Batches worker, worker + workers, ... of the rank's order: read, perturbed, collated. With
    on_error="raise" a batch's unusable sample that comes first in its shard (for a truncated shard:
    where the cut is) ends the worker's stream as a batch of its tombstone."""
    indexes: dict[int, ShardIndex] = {}
    for number in range(worker, len(order), workers):
        with ShardFiles(shards) as files:  # per batch: tiled images read lazily until decoded
            items = [_prepare(record, config, epoch)
                     for record in read_batch(shards, indexes, *order.batch(number), files)]
        bad = [item for item in items if item.image is None]
        if bad and config.on_error == "raise":
            yield _collate([min(bad, key=lambda item: (item.shard, item.key))], config.preset.size, epoch)
            return
        yield _collate(items, config.preset.size, epoch)


def _as_shipped(batch: Any) -> Any:
    """The DataLoader's conversion step, left out: labels stay a numpy array, pickled with the
    batch instead of costing a shared-memory segment of their own."""
    return batch


class _Position:
    """The epoch and resume legs every worker reads at the start of an iteration: shared memory,
    so that persistent workers follow `set_epoch` and `load_state_dict`."""

    def __init__(self, epoch: int):
        self._values = multiprocessing.get_context().RawArray("q", 2 + 3 * MAX_LEGS)
        self.set(epoch, ())

    def set(self, epoch: int, legs: tuple[Leg, ...]) -> None:
        if len(legs) > MAX_LEGS:
            raise ValueError(f"an epoch resumed more than {MAX_LEGS} times is not supported")
        flat = [v for leg in legs for v in (leg.world_size, leg.batch_size, leg.batches)]
        self._values[:2 + len(flat)] = [epoch, len(legs), *flat]

    def get(self) -> tuple[int, tuple[Leg, ...]]:
        epoch, count = self._values[0], self._values[1]
        flat = self._values[2:2 + 3 * count]
        return epoch, tuple(Leg(*flat[i:i + 3]) for i in range(0, len(flat), 3))


class _EpochStream(IterableDataset):
    """The DataLoader's dataset: each worker yields its share of the rank's batches for the
    current position (epoch and resume legs)."""

    def __init__(self, shards: ShardSet, config: LoaderConfig, position: _Position):
        self.shards, self.config, self.position = shards, config, position

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, legs = self.position.get()
        c = self.config
        order = rank_order(self.shards.counts, c.epoch_spec(epoch), c.shuffle_buffer, legs)
        return worker_batches(self.shards, c, order, epoch, worker, workers)


class CpuLoader(EpochLoader):
    """Iterates (images float32 [N,3,S,S] normalised, labels int64 [N,4]) on `config.device`.

    Workers ship uint8 images (one shared-memory segment a batch) and numpy labels (pickled with
    the batch); the main process normalises on the device. A float32 batch would cost workers and
    main process about four times the shared memory, more than the normalisation it saves them.

    `len()` is the batch count of every rank; `set_epoch` reshuffles; `skipped` lists the samples
    dropped so far with `on_error="skip"`; `batches()` also yields each batch's sample keys.
    """

    def __init__(self, shards: ShardSet, config: LoaderConfig):
        super().__init__(shards, config)
        self._position = _Position(config.epoch)
        self._forked = False
        self._loader = DataLoader(
            _EpochStream(shards, config, self._position), batch_size=None,
            collate_fn=_as_shipped, num_workers=config.workers, worker_init_fn=WorkerGuard(),
            persistent_workers=config.workers > 0, pin_memory=config.device.startswith("cuda"))

    def batches(self) -> Iterator[Batch]:
        """The rest of the epoch's batches with their sample keys."""
        return self._delivering(self._batches())

    def _batches(self) -> Iterator[Batch]:
        device = torch.device(self.config.device)
        self._position.set(self.config.epoch, self._legs)
        if self.config.workers > 0 and multiprocessing.get_start_method() == "fork":
            load_kernel()  # before the workers start: they inherit it instead of each loading it
            if not self._forked:  # the workers persist: they start on the first iteration only
                before_fork()
                self._forked = True
        for images, labels, keys, skipped in self._loader:
            if skipped and self.config.on_error == "raise":
                bad = skipped[0]
                raise SampleError(bad.shard, bad.key, bad.reason,
                                  hint="pass on_error='skip' to drop such samples")
            self._skipped.extend(skipped)
            images = normalize(images.to(device, non_blocking=True), self.config.preset)
            host_labels = torch.from_numpy(labels)
            if device.type == "cuda":  # from pageable memory the copy would wait for queued GPU work
                host_labels = host_labels.pin_memory()
            yield Batch(images, host_labels.to(device, non_blocking=True), list(keys))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            yield batch.images, batch.labels
