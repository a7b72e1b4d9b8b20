"""The Gaussian noise field of a `NoiseOp`, one function for both backends: the CPU backend adds
it in `augment.cpu`, the DALI loader feeds it to its graph, so a sample gets the same noise on
either."""
from __future__ import annotations

import math

import numpy as np
import torch

from imaginet_shards.augment.decisions import NoiseOp


def noise_field(op: NoiseOp, height: int, width: int) -> np.ndarray:
    """float32 HWC (a view of a CHW array): torch's normal generator seeded with `op.seed`, drawn
    in [3, H, W] order, times sqrt(`op.variance`)."""
    generator = torch.Generator().manual_seed(op.seed)
    noise = torch.randn((3, height, width), generator=generator).numpy().transpose(1, 2, 0)
    noise *= np.float32(math.sqrt(op.variance))
    return noise
