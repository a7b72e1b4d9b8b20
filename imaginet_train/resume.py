"""What a checkpoint holds besides weights so that a run continues exactly where it stopped, mid-epoch
and on any world size: every rank's RNG states, the epoch's running sums, the loader's position;
and the sample-key log of the test mode that checks it.

RNG states are saved per rank; a resumed rank restores its own (same world size) or, on another
world size, that of rank `rank % saved ranks`. Training draws nothing from them after initialising
the model (the loaders key their perturbations by sample), so they matter for what a user adds.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, numpy's and Python's global ones), as plain data."""
    version, mt, gauss = random.getstate()
    legacy = np.random.get_state(legacy=False)  # a dict: {bit_generator, state: {key, pos}, ...}
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"bit_generator": legacy["bit_generator"],
                      "key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)),
                      "pos": int(legacy["state"]["pos"]), "has_gauss": int(legacy["has_gauss"]),
                      "gauss": float(legacy["gauss"])},
            "python": {"version": version, "state": list(mt), "gauss": gauss}}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` returned (the CUDA state only on a CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]}})
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def gathered_rng_states(device: torch.device) -> list[dict[str, Any]]:
    """Every rank's `rng_state`, in rank order (collective: every rank calls it)."""
    mine = rng_state(device)
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return [mine]
    states: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(states, mine)
    return states


def restore_rank_rng(states: Sequence[dict[str, Any]], rank: int, device: torch.device) -> None:
    """Restore this rank's saved RNG states (those of rank `rank % len(states)` on another world size)."""
    set_rng_state(states[rank % len(states)], device)


def check_world(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that the ranks cannot share evenly, naming the world sizes that can."""
    if batch_size % world_size:
        fitting = [n for n in range(1, min(batch_size, 64) + 1) if batch_size % n == 0]
        raise ValueError(f"the global batch_size {batch_size} cannot be split evenly over {world_size} "
                         f"ranks; run on a number of processes that divides it "
                         f"({', '.join(map(str, fitting))}), or change --batch-size (a new run)")


class KeyedBatch(Protocol):
    """A batch that names its samples (both loader backends' `batches()` yield such)."""

    @property
    def images(self) -> torch.Tensor: ...

    @property
    def labels(self) -> torch.Tensor: ...

    @property
    def keys(self) -> list[str]: ...


class KeyedLoader(Protocol):
    def batches(self) -> Iterator[KeyedBatch]: ...


class KeyLog:
    """The test mode's log: one JSON line per step on every rank (`FOLDER/rank{rank}.jsonl`) with
    the sample keys the step trained on. Appended and flushed line by line, so a killed run's log
    holds every step it finished."""

    def __init__(self, folder: str | os.PathLike[str], rank: int, world_size: int) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"rank{rank}.jsonl"
        self.rank, self.world_size = rank, world_size
        self._keys: list[str] = []

    def batches(self, loader: KeyedLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`loader`'s (images, labels), remembering each batch's keys for `write`."""
        for batch in loader.batches():
            self._keys = list(batch.keys)
            yield batch.images, batch.labels

    def write(self, epoch: int, step: int) -> None:
        """Log the keys of the batch taken last as global step `step` of `epoch`."""
        line = {"rank": self.rank, "world_size": self.world_size, "epoch": epoch, "step": step,
                "keys": self._keys}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
