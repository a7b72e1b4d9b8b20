"""The loader contract both backends implement: the config, the `Loader` protocol, the shared base."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch

from imaginet_shards.augment.spec import Preset
from imaginet_shards.io.cache import DEFAULT_CACHE_BYTES
from imaginet_shards.loaders.world import EpochSpec, batches_per_rank

Backend = Literal["auto", "dali", "cpu"]
OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class LoaderConfig:
    """Everything a backend needs besides the shard set. Built by make_loader; backends read it."""

    preset: Preset
    batch_size: int
    rank: int
    world_size: int
    seed: int = 0
    epoch: int = 0
    workers: int = 2
    device: str = "cpu"
    on_error: OnError = "raise"
    shuffle: bool = True
    shuffle_buffer: int = 512
    drop_last: bool = True
    cache_dir: str | None = None
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        self.epoch_spec()  # validates rank, world size, batch size, seed and epoch
        if self.workers < 0 or self.shuffle_buffer < 0:
            raise ValueError(f"workers and shuffle_buffer must be >= 0, got workers={self.workers} "
                             f"shuffle_buffer={self.shuffle_buffer}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def epoch_spec(self, epoch: int | None = None) -> EpochSpec:
        """The partition arguments (world.py) of `epoch`, by default this config's epoch."""
        return EpochSpec(self.world_size, self.rank, self.batch_size, self.seed,
                         self.epoch if epoch is None else epoch, self.drop_last, self.shuffle)


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of a batch (with `on_error="skip"`), and why."""

    shard: str
    key: str
    reason: str
    epoch: int


class Loader(Protocol):
    """What both backends return: an iterable of (images float32 [N,3,H,W], labels int64 [N,4])."""

    config: LoaderConfig

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    @property
    def skipped(self) -> tuple[SkippedSample, ...]: ...

    def close(self) -> None: ...


class EpochLoader:
    """What both backends share: the shard set, the config, `len()` and `set_epoch`."""

    def __init__(self, shards, config: LoaderConfig):
        self.shards, self.config = shards, config
        self._total = sum(shards.counts)
        self._skipped: list[SkippedSample] = []
        if batches_per_rank(self._total, config.world_size, config.batch_size, config.drop_last) == 0:
            raise ValueError(f"{shards.root}: {self._total} samples give no batch of "
                             f"{config.batch_size} on each of {config.world_size} rank(s) "
                             f"with drop_last=True")

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return batches_per_rank(self._total, self.config.world_size, self.config.batch_size,
                                self.config.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch`'s shard order, shuffle and perturbations from the next iteration on."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.config = replace(self.config, epoch=epoch)

    @property
    def skipped(self) -> tuple[SkippedSample, ...]:
        """The samples dropped so far with `on_error="skip"` (always empty with "raise")."""
        return tuple(self._skipped)

    def close(self) -> None:
        """Stop background work the loader owns (the shard cache's prefetching)."""
        self.shards.close()

    def __enter__(self) -> EpochLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
