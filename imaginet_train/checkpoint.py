"""Training checkpoints as plain dicts: written atomically, loaded with `torch.load(weights_only=True)`.

A checkpoint holds only tensors, numbers, strings, None and lists/dicts of them (state_dicts are
such), so loading one never unpickles arbitrary objects; the run's config is a JSON-able dict.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

FORMAT_VERSION = 2  # 2: per-rank RNG states, the loader's state_dict, mid-epoch progress
READABLE_VERSIONS = (1, 2)  # 1: epoch-boundary checkpoints (one RNG state, the loader's epoch)
REQUIRED_KEYS = ("format_version", "model", "optimizer", "scheduler", "epoch", "step", "loader", "config")


def build_checkpoint(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None, epoch: int, step: int,
                     loader: Mapping[str, Any], config: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain dict to save. `loader` is the loader position (e.g. {"epoch": 3, "batch": 120});
    `model` may be DDP-wrapped (its module's state is stored); `extra` adds plain entries (e.g. RNG state).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    try:
        json.dumps(dict(config))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint config must be a JSON-able dict: {err}") from None
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "loader": dict(loader),
        "config": dict(config),
    }
    clash = sorted(set(extra or {}) & set(state))
    if clash:
        raise ValueError(f"extra checkpoint entries may not replace {', '.join(clash)}")
    state.update(extra or {})
    return state


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `state` to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    _check_plain(state, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike[str], *,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights_only=True) and check its keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a checkpoint (a dict), got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint: missing {', '.join(missing)}")
    if state["format_version"] not in READABLE_VERSIONS:
        raise ValueError(f"{path} has checkpoint format {state['format_version']}, expected one of "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    return state


def restore_checkpoint(state: Mapping[str, Any], *, model: nn.Module,
                       optimizer: torch.optim.Optimizer | None = None,
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Load the model (strictly), and the optimizer and scheduler when given, from `state`."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError("the checkpoint has no scheduler state to restore")
        scheduler.load_state_dict(state["scheduler"])


def _check_plain(value: Any, where: str) -> None:
    """Raise ValueError unless `value` is tensors, scalars, strings, None, lists and dicts throughout."""
    if value is None or isinstance(value, (Tensor, bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where} has a key of type {type(key).__name__}; "
                                 "only str and int keys are plain")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, numbers, "
                     "strings, None, lists and dicts")


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
