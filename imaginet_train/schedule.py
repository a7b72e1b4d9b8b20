"""The learning-rate schedule: a linear warm-up from `start_factor` x lr to lr, then a cosine down to
`MIN_LR_FACTOR` x lr at the end of the run.

Its value at epoch e (an epoch boundary) is the reference's `SequentialLR` of
`LinearLR(start_factor, total_iters=warmup)` and `CosineAnnealingLR(T_max=epochs - warmup,
eta_min=lr * MIN_LR_FACTOR)` stepped once per epoch. `LrSchedule` is stepped after every batch;
`per_epoch` holds each epoch's value for all its batches (as the reference), otherwise the factor
moves every batch along the same curve, so both agree at every epoch boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_LR_FACTOR = 1e-3  # the cosine decays to lr * MIN_LR_FACTOR


def lr_factor(epoch: float, *, epochs: int, warmup_epochs: float, start_factor: float,
              min_factor: float = MIN_LR_FACTOR) -> float:
    """The lr multiplier at (fractional) `epoch` of an `epochs`-long run."""
    if epoch < warmup_epochs:
        return start_factor + (1 - start_factor) * epoch / warmup_epochs
    span = epochs - warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / span) if span > 0 else 1.0
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LrSchedule:
    """`LambdaLR`'s function: global step -> lr multiplier. Plain fields, so it lives in checkpoints."""

    epochs: int
    warmup_epochs: float
    start_factor: float
    steps_per_epoch: int
    per_epoch: bool = False

    def __call__(self, step: int) -> float:
        epoch = step // self.steps_per_epoch if self.per_epoch else step / self.steps_per_epoch
        return lr_factor(epoch, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                         start_factor=self.start_factor)
