"""The loops, split as in torchvision's references/classification: `train_one_epoch` here, the
evaluation pass in `evaluate.py`; `Runtime` holds the per-device choices both share.

`train_one_epoch` times every step and splits it into waiting for the loader and the rest, sums
(loss, images, waiting, step time) over ranks with one small all-reduce a step, and reports global
figures: the loss of the global batch, images/s of the whole job, the fraction of step time spent
waiting for data (averaged over ranks).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from tqdm import tqdm

from imaginet_shards.loaders import Backend

ModuleT = TypeVar("ModuleT", bound=nn.Module)

Objective = Callable[[nn.Module, Tensor, Tensor], Tensor]
Amp = Literal["auto", "bf16", "off"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a command runs, not what it computes: loader backend and workers, bf16 autocast,
    channels_last, torch threads, progress output. Shared by `selfcon`/`ce`, `linear` and `evaluate`."""

    backend: Backend = "auto"
    workers: int = 4
    amp: Amp = "auto"
    channels_last: bool = True
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "dali", "cpu"):
            raise ValueError(f"backend must be 'auto', 'dali' or 'cpu', got {self.backend!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        for name in ("workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def apply_threads(self) -> None:
        """Set torch's intra-op thread count when one is given."""
        if self.threads:
            torch.set_num_threads(self.threads)

    def runtime(self, device: torch.device | str) -> Runtime:
        """The per-device choices (autocast, memory format) on `device`."""
        return Runtime.for_device(device, self.amp, self.channels_last)


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run: device, bf16 autocast, channels_last memory format."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device | str, amp: Amp = "auto", channels_last: bool = True) -> Runtime:
        """`amp="auto"` means bf16 autocast on CUDA and float32 elsewhere (CPU bf16 is slow)."""
        device = torch.device(device)
        if amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
        bf16 = amp == "bf16" or (amp == "auto" and device.type == "cuda")
        return cls(device=device, bf16=bf16, channels_last=channels_last)

    def autocast(self) -> AbstractContextManager:
        """Device-agnostic bf16 autocast (disabled when `bf16` is off)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare_model(self, model: ModuleT) -> ModuleT:
        """Move `model` to the device, in channels_last when asked."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_images(self, images: Tensor) -> Tensor:
        """Move a batch to the device, in channels_last when asked."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


@dataclass(frozen=True)
class EpochStats:
    """One epoch on all ranks: mean loss, images, wall time, time waiting for data, last lr."""

    epoch: int
    steps: int
    loss: float
    images: int
    seconds: float
    data_fraction: float
    lr: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    def record(self) -> dict[str, Any]:
        """The epoch's JSON-lines record."""
        return {"kind": "epoch", "epoch": self.epoch, "steps": self.steps, "loss": self.loss,
                "images": self.images, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 2), "data_fraction": round(self.data_fraction, 4),
                "lr": self.lr}


@dataclass(frozen=True)
class EpochProgress:
    """How far an epoch has come: its steps so far and their sums (the global batches' losses; over
    ranks, images, seconds waiting for data and step seconds). A checkpoint taken mid-epoch stores
    it, so that the resumed epoch's stats sum the same steps as an uninterrupted one's."""

    steps: int = 0
    totals: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "totals": list(self.totals)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpochProgress:
        loss, images, waiting, seconds = (float(v) for v in data["totals"])
        return cls(int(data["steps"]), (loss, images, waiting, seconds))


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as every rank sees it after the all-reduce."""

    epoch: int
    step: int  # global step, counted from the start of the run
    loss: float
    lr: float

    def record(self) -> dict[str, Any]:
        return {"kind": "step", "epoch": self.epoch, "step": self.step, "loss": self.loss, "lr": self.lr}


def train_one_epoch(model: nn.Module, objective: Objective, loader: Iterable[tuple[Tensor, Tensor]],
                    optimizer: torch.optim.Optimizer, *, runtime: Runtime, epoch: int, first_step: int = 0,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    on_step: Callable[[StepRecord, EpochProgress], None] | None = None,
                    progress: bool = False, resumed: EpochProgress | None = None) -> EpochStats:
    """One pass over `loader`: forward under autocast, backward, optimizer (and per-step scheduler) step.

    `first_step` is the global step number of this epoch's first batch (for logging); `on_step` is
    called after every step with the epoch's progress so far. `resumed` continues an epoch that a
    checkpoint interrupted (`loader` then yields the rest of it; `first_step` is the epoch's first).
    A non-finite loss raises FloatingPointError before the weights change.
    """
    model.train()
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    resumed = EpochProgress() if resumed is None else resumed
    # global loss sum, images, data seconds, step seconds (the last two summed over ranks)
    totals = torch.tensor(resumed.totals, dtype=torch.float64)
    steps = resumed.steps
    bar = tqdm(total=_length(loader), initial=steps, desc=f"epoch {epoch}", unit="batch",
               disable=not progress, dynamic_ncols=True, leave=False)
    # a resumed epoch's clock starts at the (rank-averaged) step time it had run before
    started = time.perf_counter() - resumed.totals[3] / world
    ready = time.perf_counter()
    for images, labels in loader:
        fetched = time.perf_counter()
        images, labels = runtime.prepare_images(images), labels.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            loss = objective(model, images, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch} step {first_step + steps}: loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        done = time.perf_counter()
        step = _all_reduce_sum(torch.tensor([loss.item(), len(images), fetched - ready, done - ready],
                                            dtype=torch.float64), runtime.device)
        step[0] /= world  # the global batch's loss (the world may change when an epoch resumes)
        totals += step
        ready = done
        record = StepRecord(epoch, first_step + steps, float(step[0]), lr)
        steps += 1
        if on_step is not None:
            loss_sum, images_sum, waiting, seconds = (float(v) for v in totals)
            on_step(record, EpochProgress(steps, (loss_sum, images_sum, waiting, seconds)))
        bar.update()
        bar.set_postfix(loss=f"{record.loss:.4f}", img_s=f"{totals[1] / (done - started):.0f}",
                        data=f"{totals[2] / max(float(totals[3]), 1e-9):.0%}")
    bar.close()
    if steps == 0:
        raise ValueError(f"epoch {epoch}: the loader yielded no batch")
    return EpochStats(epoch=epoch, steps=steps, loss=float(totals[0]) / steps, images=int(totals[1]),
                      seconds=time.perf_counter() - started,
                      data_fraction=float(totals[2] / totals[3]) if totals[3] > 0 else 0.0,
                      lr=optimizer.param_groups[0]["lr"])


def _all_reduce_sum(values: Tensor, device: torch.device) -> Tensor:
    """Sum a small float64 tensor over ranks (identity without a process group); returns it on the CPU."""
    if not tdist.is_initialized() or tdist.get_world_size() == 1:
        return values
    values = values.to(device)
    tdist.all_reduce(values)
    return values.cpu()


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
