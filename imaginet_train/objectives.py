"""Training objectives: callables `(model, images, labels [N, 4]) -> scalar loss` for `train_one_epoch`.

- `SelfConObjective`: the ImagiNet SelfCon loss on (sub-network, backbone) features, gathered over ranks.
- `CrossEntropyObjective`: the cross-entropy baseline on the `origin` or `family` track.
- `HeadsObjective`: the classifier heads of `linear` (BCE on origin + cross-entropy on family).

The family label exists for synthetic rows only (real images have family "none"), so family terms are
averaged over the batch's synthetic rows and are 0 (still differentiable) when it has none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import FAMILY, ORIGIN, SYNTHETIC, TEMPERATURE, gathered_imaginet_selfcon_loss
from .model import Encoder

TRACKS = ("origin", "family")
ORIGIN_CLASSES = 2
FAMILY_CLASSES = 4  # GAN, Stable Diffusion, Midjourney, DALL-E 3


def family_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of `logits` [N, 4] against the family of the synthetic rows of `labels`."""
    synthetic = labels[:, ORIGIN] == SYNTHETIC
    # Real rows get a placeholder target (ignored): their family label (4, "none") is not a class.
    target = torch.where(synthetic, labels[:, FAMILY], 0)
    losses = F.cross_entropy(logits.float(), target, reduction="none")
    return (losses * synthetic).sum() / synthetic.sum().clamp(min=1)


class Classifier(nn.Module):
    """An encoder with a linear classifier on its pooled features: the cross-entropy baseline."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.encoder(x)[1])


@dataclass(frozen=True)
class SelfConObjective:
    """`imaginet_selfcon_loss` over the global batch (all ranks); each rank returns its share."""

    temperature: float = TEMPERATURE

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        sub, backbone = model(images)
        features = torch.stack((sub, backbone), dim=1).float()
        return gathered_imaginet_selfcon_loss(features, labels, self.temperature, self.temperature)


@dataclass(frozen=True)
class CrossEntropyObjective:
    """Cross-entropy on the origin (2 classes, all rows) or family (4 classes, synthetic rows) track."""

    track: Literal["origin", "family"] = "origin"

    def __post_init__(self) -> None:
        if self.track not in TRACKS:
            raise ValueError(f"track must be one of {', '.join(TRACKS)}, got {self.track!r}")

    @property
    def num_classes(self) -> int:
        return ORIGIN_CLASSES if self.track == "origin" else FAMILY_CLASSES

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        logits = model(images)
        if self.track == "origin":
            return F.cross_entropy(logits.float(), labels[:, ORIGIN])
        return family_cross_entropy(logits, labels)


@dataclass(frozen=True)
class HeadsObjective:
    """BCE of the origin logit over all rows + cross-entropy of the family logits over synthetic rows."""

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        origin_logit, family_logits = model(images)
        origin = F.binary_cross_entropy_with_logits(origin_logit.float(), labels[:, ORIGIN].float())
        return origin + family_cross_entropy(family_logits, labels)
