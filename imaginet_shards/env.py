"""The process's environment, read in one place: torchrun's variables, the device, optional packages.

Loaders and the trainer both ask here, so they agree on RANK, WORLD_SIZE and LOCAL_RANK.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["DistEnv", "device_for", "default_device", "dali_installed"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: torchrun's RANK, WORLD_SIZE and LOCAL_RANK."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK {self.rank} is not in 0..{self.world_size - 1} "
                             f"(WORLD_SIZE {self.world_size})")
        if not 0 <= self.local_rank <= self.rank:
            raise ValueError(f"LOCAL_RANK {self.local_rank} is not in 0..RANK ({self.rank})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read torchrun's variables (default: os.environ); all absent means a single process."""
        environ = os.environ if environ is None else environ
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        present = [n for n in names if n in environ]
        if not present:
            return cls()
        if "WORLD_SIZE" not in environ or "RANK" not in environ:
            raise ValueError(f"found {', '.join(present)} but not all of RANK and WORLD_SIZE; launch with "
                             "torchrun or set RANK and WORLD_SIZE (and LOCAL_RANK) together")
        values = {n: _int_var(environ, n) for n in present}
        return cls(rank=values["RANK"], world_size=values["WORLD_SIZE"],
                   local_rank=values.get("LOCAL_RANK", values["RANK"]))

    @property
    def distributed(self) -> bool:
        """True when this job has more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs, writes checkpoints and shows progress."""
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={environ[name]!r} is not an integer") from None


def device_for(env: DistEnv) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if env.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA devices "
                         "are visible")
    return torch.device("cuda", env.local_rank)


def default_device(env: DistEnv | None = None) -> str:
    """The training device as a string: `cuda:LOCAL_RANK` when CUDA is available, else `cpu`."""
    return str(device_for(DistEnv.from_env() if env is None else env))


def dali_installed() -> bool:
    """True when `nvidia.dali` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no `nvidia` namespace package at all
        return False
