"""make_loader: the one entry point to both backends and the loader contract (DESIGN §5)."""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal, Protocol

import torch

from .augment import Preset, get_preset
from .cache import DEFAULT_CACHE_BYTES
from .world import batches_per_rank
from .world import EpochSpec

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


class Loader(Protocol):
    """What both backends return: an iterable of (images float32 [N,3,H,W], labels int64 [N,4])."""

    config: LoaderConfig

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


class EpochLoader:
    """What both backends share: the shard set, the config, `len()` and `set_epoch`."""

    def __init__(self, shards, config: LoaderConfig):
        self.shards, self.config = shards, config
        self._total = sum(shards.counts)
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


def env_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit values win, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    return rank, world_size


def env_device() -> str:
    """The training device: `cuda:LOCAL_RANK` (torchrun's variable, 0 without it) when CUDA is
    available, else `cpu`."""
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no `nvidia` namespace package at all
        return False


def make_loader(source: str | os.PathLike, *, backend: Backend = "auto", preset: str | Preset = "train",
                batch_size: int, rank: int | None = None, world_size: int | None = None,
                seed: int = 0, epoch: int = 0, device: str | None = None, **options: Any) -> Loader:
    """A loader over the shard set at `source` (directory, manifest.json path or URL).

    `rank`/`world_size` default to torchrun's environment, `device` to `env_device()`; `options` are
    the other LoaderConfig fields (workers, on_error, shuffle, shuffle_buffer, drop_last, cache_dir, cache_bytes).
    `backend="auto"` uses DALI when `nvidia.dali` imports and a pipeline can be built, else the CPU
    backend (with a warning saying why DALI was not used, when it is installed).
    """
    if backend not in ("auto", "dali", "cpu"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'cpu', got {backend!r}")
    rank, world_size = env_world(rank, world_size)
    config = LoaderConfig(preset=get_preset(preset), batch_size=batch_size, rank=rank,
                          world_size=world_size, seed=seed, epoch=epoch,
                          device=env_device() if device is None else device, **options)
    if backend == "dali":
        from .loader_dali import make_dali_loader
        return make_dali_loader(source, config)
    if backend == "auto" and _dali_installed():
        try:
            from .loader_dali import make_dali_loader
            return make_dali_loader(source, config)
        except (ImportError, RuntimeError) as exc:
            warnings.warn(f"DALI is installed but unusable here ({exc}); using the CPU backend",
                          RuntimeWarning, stacklevel=2)
    from .loader_cpu import CpuLoader
    from .shardset import open_shard_set
    return CpuLoader(open_shard_set(str(source), config.cache_dir, config.cache_bytes), config)
