"""The loader contract both backends implement: the config, the `Loader` protocol, the shared base."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

import torch

from imaginet_shards.augment.spec import Preset
from imaginet_shards.io.cache import DEFAULT_CACHE_BYTES
from imaginet_shards.loaders.world import (
    EpochSpec,
    Leg,
    RankOrder,
    batches_per_rank,
    delivered_samples,
    rank_order,
)

Backend = Literal["auto", "dali", "cpu"]
T = TypeVar("T")
STATE_VERSION = 1
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

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochLoader:
    """What both backends share: the shard set, the config, `len()`, `set_epoch`, the rank's
    delivery order and the resumable position in it (`state_dict`, `load_state_dict`)."""

    def __init__(self, shards, config: LoaderConfig):
        self.shards, self.config = shards, config
        self._total = sum(shards.counts)
        self._skipped: list[SkippedSample] = []
        self._legs: tuple[Leg, ...] = ()  # interrupted parts of the current epoch (loaded state)
        self._delivered = 0  # batches handed out by the current iteration
        self._finished = False  # the last iteration delivered the epoch's last batch
        if batches_per_rank(self._total, config.world_size, config.batch_size, config.drop_last) == 0:
            raise ValueError(f"{shards.root}: {self._total} samples give no batch of "
                             f"{config.batch_size} on each of {config.world_size} rank(s) "
                             f"with drop_last=True")

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return batches_per_rank(self._total, self.config.world_size, self.config.batch_size,
                                self.config.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch`'s shard order, shuffle and perturbations from the next iteration on (a
        resumed epoch keeps its loaded position when set to the same epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.config.epoch:
            self._legs, self._delivered, self._finished = (), 0, False
        self.config = replace(self.config, epoch=epoch)

    def order(self) -> RankOrder:
        """This rank's samples and batches for the next iteration: the whole epoch, or what a
        loaded state left of it (world.py)."""
        c = self.config
        return rank_order(self.shards.counts, c.epoch_spec(), c.shuffle_buffer, self._legs)

    def _delivering(self, batches: Iterator[T]) -> Iterator[T]:
        """A backend's batch stream, counted as the caller takes each batch (prefetched batches do
        not count), for `state_dict`."""
        self._delivered, self._finished = 0, False
        for batch in batches:
            self._delivered += 1
            yield batch
        self._legs, self._delivered, self._finished = (), 0, True

    def state_dict(self) -> dict[str, Any]:
        """Where delivery stands (JSON-serialisable; the same on every rank): the epoch, the legs
        of it already delivered (world size, batch size, batches per rank), the samples they hold
        and what fixes the order (seed, shuffle settings, shard set)."""
        c = self.config
        epoch, legs = c.epoch, self._legs
        if self._finished:
            epoch, legs = epoch + 1, ()
        elif self._delivered:
            legs = (*legs, Leg(c.world_size, c.batch_size, self._delivered))
        return {"version": STATE_VERSION, "epoch": epoch, "seed": c.seed,
                "shard_set": self.shards.manifest.sha256, "world_size": c.world_size,
                "batch_size": c.batch_size, "drop_last": c.drop_last, "shuffle": c.shuffle,
                "shuffle_buffer": c.shuffle_buffer,
                "legs": [[leg.world_size, leg.batch_size, leg.batches] for leg in legs],
                "delivered": delivered_samples(self.shards.counts, c.epoch_spec(epoch),
                                               c.shuffle_buffer, legs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict`, possibly of another world size): the next
        iteration delivers what is left of its epoch, re-partitioned over this loader's ranks.
        Raises ValueError naming what differs when the state belongs to another shard set or order,
        or when what is left cannot be shared evenly by this world and batch size."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        c = self.config
        mine = {"shard_set": self.shards.manifest.sha256, "seed": c.seed, "drop_last": c.drop_last,
                "shuffle": c.shuffle, "shuffle_buffer": c.shuffle_buffer}
        differs = [f"{k} (saved {state.get(k)!r}, now {v!r})" for k, v in mine.items()
                   if state.get(k) != v]
        if differs:
            raise ValueError("the loader state belongs to another run: " + "; ".join(differs))
        legs = tuple(Leg(*leg) for leg in state["legs"])
        epoch = int(state["epoch"])
        rank_order(self.shards.counts, c.epoch_spec(epoch), c.shuffle_buffer, legs)  # validates
        self.config = replace(c, epoch=epoch)
        self._legs, self._delivered, self._finished = legs, 0, False

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
