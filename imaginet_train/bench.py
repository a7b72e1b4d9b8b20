"""The trainer's side of the model-in-the-loop benchmark: one SelfCon training step of a fresh model.

`imaginet-train bench --model ARCH` runs the loader bench matrix of `imaginet_shards.bench` with this
step in the loop (forward, `imaginet_selfcon_loss`, backward, SGD), to tell whether training is
input-bound.
"""
from __future__ import annotations

import torch

from imaginet_shards.bench.model import Step
from imaginet_train.losses import imaginet_selfcon_loss
from imaginet_train.model import build_model

__all__ = ["selfcon_step"]


def selfcon_step(arch: str, device: str) -> Step:
    """A function (images, labels) -> None doing one SelfCon training step of a fresh `arch` model."""
    model = build_model(arch).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        out = model(images.to(device, non_blocking=True))
        loss = imaginet_selfcon_loss(torch.stack(out, 1), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step
