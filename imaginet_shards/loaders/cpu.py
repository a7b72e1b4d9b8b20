"""The CPU backend: shards read with webdataset's tar iterator, torchvision transforms, DataLoader workers.

Each DataLoader worker reads the segments `world.worker_plan` gives it, decodes and perturbs every
sample (decisions keyed by (seed, epoch, key): independent of worker count), mixes the results in a
shuffle buffer of small uint8 crops, and ships whole uint8 batches with their labels and keys; the
main process normalises them on `config.device`. Unusable samples travel as tombstones through the
buffer, so batch counts never change: with `on_error="skip"` a batch is just smaller, and the
skipped samples are listed in `loader.skipped`; with "raise" the main process raises a SampleError
naming shard and key (workers never raise for bad data, so no worker traceback wraps the error).
"""
from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imaginet_shards.augment.cpu import augment, normalize
from imaginet_shards.errors import SampleError
from imaginet_shards.io.shardset import Record, ShardSet, load_index, read_samples
from imaginet_shards.loaders.base import EpochLoader, LoaderConfig, SkippedSample
from imaginet_shards.loaders.world import WorkerPlan, sample_rng, stream_rng, worker_plan


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
        return _Item(record.key, augment(record.image, config.preset, rng), record.labels,
                     record.shard, "")
    except ValueError as exc:
        return _Item(record.key, None, None, record.shard, str(exc))


def shuffled(items: Iterable, size: int, rng: np.random.Generator, initial: int = 64) -> Iterator:
    """A shuffle buffer of `size`: items come out in a random order, each exactly once.

    Output starts once `initial` items are buffered; the buffer then grows by one item for every
    two read until it holds `size`, so the first batch does not wait for `size` decodes.
    """
    buffer: list = []
    for count, item in enumerate(items, 1):
        buffer.append(item)
        if len(buffer) >= size or (len(buffer) >= min(initial, size) and count % 2 == 0):
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def _collate(items: list[_Item], size: int, epoch: int):
    """(uint8 images [n,3,S,S], int64 labels [n,4], keys, skipped records) of one batch."""
    kept = [(item.key, item.image, item.labels) for item in items
            if item.image is not None and item.labels is not None]
    images = (torch.stack([image for _, image, _ in kept]) if kept
              else torch.empty((0, 3, size, size), dtype=torch.uint8))
    labels = torch.from_numpy(np.stack([label for _, _, label in kept]) if kept
                              else np.empty((0, 4), dtype=np.int64))
    skipped = [SkippedSample(i.shard, i.key, i.error, epoch) for i in items if i.image is None]
    return images, labels, [key for key, _, _ in kept], skipped


class _Failure(Exception):
    """Carries the first tombstone out of a worker's pipeline (on_error="raise")."""

    def __init__(self, item: _Item):
        super().__init__(item.error)
        self.item = item


def _until_failure(items: Iterator[_Item]) -> Iterator[_Item]:
    """Pass items on until the first tombstone, then stop the worker's pipeline with it
    (on_error="raise": report the first bad sample in read order, read no further)."""
    for item in items:
        if item.image is None:
            raise _Failure(item)
        yield item


def worker_batches(shards: ShardSet, config: LoaderConfig, plan: WorkerPlan, epoch: int,
                   worker: int) -> Iterator[tuple]:
    """The batches of one worker's plan: reading, perturbing, shuffling, collating."""
    indexes = {}
    for segment in plan.segments:  # load each needed index once (at most a few per worker)
        if segment.shard not in indexes:
            indexes[segment.shard] = load_index(shards, shards.manifest.shards[segment.shard])
    records = chain.from_iterable(read_samples(shards, indexes[s.shard], s.start, s.stop)
                                  for s in plan.segments)
    items: Iterator[_Item] = (_prepare(record, config, epoch) for record in records)
    if config.on_error == "raise":
        items = _until_failure(items)
    if config.shuffle and config.shuffle_buffer > 1:
        rng = stream_rng(config.epoch_spec(epoch), worker)
        items = shuffled(items, config.shuffle_buffer, rng)
    try:
        for size in plan.batch_sizes:
            yield _collate(list(islice(items, size)), config.preset.size, epoch)
    except _Failure as failure:  # the main process raises on this batch of one tombstone
        yield _collate([failure.item], config.preset.size, epoch)


class _EpochStream(IterableDataset):
    """The DataLoader's dataset: each worker yields the batches of its plan for the current epoch
    (read from shared memory, so that persistent workers follow `set_epoch`)."""

    def __init__(self, shards: ShardSet, config: LoaderConfig, epoch: ctypes.c_int64):
        self.shards, self.config, self.epoch = shards, config, epoch

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = int(self.epoch.value)
        plan = worker_plan(self.shards.counts, self.config.epoch_spec(epoch), workers, worker)
        return worker_batches(self.shards, self.config, plan, epoch, worker)


class CpuLoader(EpochLoader):
    """Iterates (images float32 [N,3,S,S] normalised, labels int64 [N,4]) on `config.device`.

    `len()` is the batch count of every rank; `set_epoch` reshuffles; `skipped` lists the samples
    dropped so far with `on_error="skip"`; `batches()` also yields each batch's sample keys.
    """

    def __init__(self, shards: ShardSet, config: LoaderConfig):
        super().__init__(shards, config)
        self._epoch = multiprocessing.get_context().RawValue("q", config.epoch)
        self._loader = DataLoader(
            _EpochStream(shards, config, self._epoch), batch_size=None, num_workers=config.workers,
            persistent_workers=config.workers > 0, pin_memory=config.device.startswith("cuda"))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch.value = epoch  # read by the persistent workers

    def batches(self) -> Iterator[Batch]:
        device = torch.device(self.config.device)
        for images, labels, keys, skipped in self._loader:
            if skipped and self.config.on_error == "raise":
                bad = skipped[0]
                raise SampleError(bad.shard, bad.key, bad.reason,
                                  hint="pass on_error='skip' to drop such samples")
            self._skipped.extend(skipped)
            images = images.to(device, non_blocking=True)
            yield Batch(normalize(images, self.config.preset), labels.to(device, non_blocking=True),
                        list(keys))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            yield batch.images, batch.labels
