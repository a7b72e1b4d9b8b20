"""SelfCon encoders (ResNet-50 with or without stem downsampling, a small CPU net) and classifier heads.

The encoder keeps torchvision's module names (conv1, bn1, layer1..layer4), so `model.encoder` loads a
torchvision `resnet50` state_dict. SelfCon (Bae et al.) adds a sub-network on layer2's output; the
backbone and the sub-network each get their own projection head, and both outputs are L2-normalized.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from .catalog import ARCHS

IMAGENET = "imagenet"
IMAGENET_WEIGHTS = torchvision.models.ResNet50_Weights.IMAGENET1K_V2

# The small encoder: a stride-2 stem on the image's high-pass residual, then four single-BasicBlock
# stages of these widths (layer1 keeps the stem's resolution, layers 2-4 halve it). Sized to train
# 96x96 crops at well over 100 images/s on two CPU cores; its layer2 (32 channels) feeds the
# sub-network and its pooled output is 128-d.
SMALL_WIDTHS = (16, 32, 64, 128)
# Side of the box filter whose output the small stem subtracts from the image (see ResidualConv2d).
RESIDUAL_BOX = 3


class Encoder(nn.Module):
    """A ResNet trunk under torchvision's names; forward returns (layer2 map, pooled features)."""

    def __init__(self, conv1: nn.Conv2d, maxpool: nn.Module, layers: tuple[nn.Sequential, ...],
                 sub_channels: int, out_dim: int, head_batch_norm: bool = False) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"Encoder needs exactly 4 stages (layer1..layer4), got {len(layers)}")
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(conv1.out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.sub_channels = sub_channels
        self.out_dim = out_dim
        self.head_batch_norm = head_batch_norm  # projection heads built on this encoder use BN

    def stem(self, x: Tensor) -> Tensor:
        """conv1 - bn1 - relu - maxpool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mid = self.layer2(self.layer1(self.stem(x)))
        out = self.layer4(self.layer3(mid))
        return mid, torch.flatten(self.avgpool(out), 1)


class ResidualConv2d(nn.Conv2d):
    """A Conv2d applied to the high-pass residual x - box(x) (a fixed, parameter-free filter).

    Generator traces are faint high-frequency patterns under much stronger image content. Starting
    from the residual, as forensic detectors often do (e.g. SRM filters), lets a tiny network trained
    from scratch find them within a few CPU epochs; measured on the embedded sample, SelfCon + heads
    went from chance to well above it. The ResNet-50 archs keep torchvision's stem (ImageNet weights).
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x - F.avg_pool2d(x, RESIDUAL_BOX, stride=1, padding=RESIDUAL_BOX // 2,
                                                count_include_pad=False))


class ProjectionHead(nn.Sequential):
    """Linear(D, D) - ReLU - Linear(D, feat_dim), the SupCon/SelfCon MLP head; with `batch_norm`,
    BatchNorm1d after the first Linear (the `small` arch: without it, its projections start almost
    identical and SupCon stalls at the collapsed solution)."""

    def __init__(self, dim: int, feat_dim: int, batch_norm: bool = False) -> None:
        norm = [nn.BatchNorm1d(dim)] if batch_norm else []
        super().__init__(nn.Linear(dim, dim), *norm, nn.ReLU(inplace=True), nn.Linear(dim, feat_dim))


class SelfConModel(nn.Module):
    """Encoder + SelfCon sub-network on layer2 + two projection heads.

    forward(x) -> (sub-network features, backbone features), each [N, feat_dim] and L2-normalized;
    stack them with `torch.stack(out, dim=1)` for the `[B, V, D]` the losses take.
    """

    def __init__(self, encoder: Encoder, feat_dim: int = 128) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be a positive integer, got {feat_dim}")
        self.encoder = encoder
        self.sub_pool = nn.AdaptiveAvgPool2d(1)
        self.sub_fc = nn.Linear(encoder.sub_channels, encoder.out_dim)
        self.sub_head = ProjectionHead(encoder.out_dim, feat_dim, encoder.head_batch_norm)
        self.head = ProjectionHead(encoder.out_dim, feat_dim, encoder.head_batch_norm)

    @property
    def out_dim(self) -> int:
        """Width of `encode`'s output (2048 for the ResNet-50 archs): the classifier heads' input."""
        return self.encoder.out_dim

    def encode(self, x: Tensor) -> Tensor:
        """Pooled encoder features [N, out_dim], what the classifier heads are trained on."""
        return self.encoder(x)[1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mid, pooled = self.encoder(x)
        sub = self.sub_fc(torch.flatten(self.sub_pool(mid), 1))
        return F.normalize(self.sub_head(sub), dim=1), F.normalize(self.head(pooled), dim=1)


class OriginHead(nn.Sequential):
    """Real-vs-synthetic head: BatchNorm1d - Linear(D, 1024) - ReLU - Dropout(0.2) - Linear(1024, 1).

    Returns one logit per sample, shape [N], for `binary_cross_entropy_with_logits`.
    """

    def __init__(self, in_dim: int, hidden: int = 1024, dropout: float = 0.2) -> None:
        super().__init__(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze(-1)


class FamilyHead(nn.Sequential):
    """Generator-family head on L2-normalized features: Linear(D, 1024) - ReLU - Linear(1024, classes)."""

    def __init__(self, in_dim: int, hidden: int = 1024, num_classes: int = 4) -> None:
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.normalize(x, dim=1))


@dataclass(frozen=True)
class PretrainedReport:
    """What `load_pretrained` did: tensors loaded, and the keys it skipped on purpose."""

    loaded: int
    ignored: tuple[str, ...]


def build_model(arch: str, *, pretrained: str | None = None, feat_dim: int = 128) -> SelfConModel:
    """A SelfCon model for `arch` in ARCHS.

    `pretrained`: None (random init), a local path to a torchvision `resnet50` state_dict, or "imagenet"
    to download torchvision's IMAGENET1K_V2 weights, the ones the ImagiNet authors start from (needs
    internet; only ever on explicit request).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "small":
        if pretrained is not None:
            raise ValueError("arch 'small' has no pretrained weights; pretrained is for the resnet50 archs")
        return SelfConModel(_small_encoder(), feat_dim)
    encoder = _resnet50_encoder(nodown=arch == "resnet50nodown")
    if pretrained is not None:
        load_pretrained(encoder, pretrained)
    return SelfConModel(encoder, feat_dim)


def load_pretrained(encoder: Encoder, source: str | os.PathLike[str]) -> PretrainedReport:
    """Load torchvision `resnet50` weights into `encoder` from a local file or "imagenet" (download of
    IMAGENET1K_V2).

    `fc.*` is ignored and a missing `num_batches_tracked` counter tolerated; any other missing or
    unexpected key, or a shape mismatch, raises ValueError naming the keys.
    """
    if str(source) == IMAGENET:
        state = IMAGENET_WEIGHTS.get_state_dict(progress=True)
        origin = f"torchvision {IMAGENET_WEIGHTS}"
    else:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"pretrained weights file not found: {source}")
        state = torch.load(source, map_location="cpu", weights_only=True)
        origin = str(source)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{origin} is not a state_dict (a mapping of parameter names to tensors)")
    ignored = tuple(sorted(k for k in state if k.startswith("fc.")))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
                        for k, v in state.items() if k in own and v.shape != own[k].shape)
    problems = [f"{len(keys)} {what}: {_preview(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise ValueError(f"{origin} does not match torchvision's resnet50 encoder: " + "; ".join(problems))
    encoder.load_state_dict(state, strict=False)
    return PretrainedReport(loaded=len(state), ignored=ignored)


def _preview(keys: list[str], limit: int = 8) -> str:
    """The first `limit` keys, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys) - limit} more)"


def _resnet50_encoder(nodown: bool) -> Encoder:
    """torchvision's ResNet-50 trunk; `nodown` makes conv1 and the max-pool stride 1 (full resolution)."""
    net = torchvision.models.resnet50(weights=None)
    conv1, maxpool = net.conv1, net.maxpool
    if nodown:
        conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=1, padding=3, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    layers = (net.layer1, net.layer2, net.layer3, net.layer4)
    return Encoder(conv1, maxpool, layers, sub_channels=512, out_dim=2048)


def _small_encoder() -> Encoder:
    """A tiny BasicBlock ResNet (widths SMALL_WIDTHS) for CPU tests and the demo."""
    w1, w2, w3, w4 = SMALL_WIDTHS
    conv1 = ResidualConv2d(3, w1, kernel_size=3, stride=2, padding=1, bias=False)
    layers = (_basic_stage(w1, w1, stride=1), _basic_stage(w1, w2, stride=2),
              _basic_stage(w2, w3, stride=2), _basic_stage(w3, w4, stride=2))
    encoder = Encoder(conv1, nn.Identity(), layers, sub_channels=w2, out_dim=w4, head_batch_norm=True)
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return encoder


def _basic_stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """One torchvision BasicBlock, with a 1x1 projection shortcut when the shape changes."""
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample))
