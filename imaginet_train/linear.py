"""`linear`: classifier heads on a frozen encoder, trained on the calibration split.

The origin head (BCE on the encoder's pooled features as they are) and the family head
(cross-entropy over the synthetic rows, on L2-normalised features) train together with one Adam
optimizer (their parameters are disjoint, so this equals training them apart) on the `calibration`
preset. As in the ImagiNet authors' head training, the encoder's weights stay frozen but its
BatchNorm layers run in training mode (`adapt_bn`): their running statistics are re-estimated on the
calibration images, and the heads learn on features normalised with batch statistics. The result,
`OUT/heads.pt`, is a self-contained detector checkpoint: the encoder with those statistics and both
heads, with the encoder's training config, which `evaluate` loads (all in eval mode).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imaginet_shards.augment.spec import get_preset
from imaginet_shards.loaders import make_loader

from . import dist
from .checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from .engine import EpochStats, RuntimeOptions, train_one_epoch
from .model import Encoder, FamilyHead, OriginHead, build_model
from .objectives import FAMILY_CLASSES, HeadsObjective
from .runlog import RunLog

HEADS_NAME = "heads.pt"
ENCODER_PREFIX = "encoder."


class Detector(nn.Module):
    """A frozen encoder with the origin and family heads: forward(x) -> (origin logit [N], family logits [N, 4]).

    The encoder never receives gradients. In training mode only its BatchNorm layers train (with
    `adapt_bn`, re-estimating their running statistics), or none of it (without); in eval mode all
    of it is in eval mode.
    """

    def __init__(self, encoder: Encoder, adapt_bn: bool = True) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.origin = OriginHead(encoder.out_dim)
        self.family = FamilyHead(encoder.out_dim, num_classes=FAMILY_CLASSES)
        self.adapt_bn = adapt_bn

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        self.encoder.eval()
        if mode and self.adapt_bn:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            features = self.encoder(x)[1].float()
        return self.origin(features), self.family(features)


@dataclass(frozen=True)
class LinearConfig:
    """Heads training: encoder checkpoint (from `selfcon` or `ce`), calibration shards, output folder."""

    checkpoint: str
    data: str
    out: str
    epochs: int = 5
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 200
    size: int = 256  # the calibration preset's output side
    seed: int = 0
    adapt_bn: bool = True  # re-estimate the encoder's BatchNorm statistics on the calibration data
    runtime: RuntimeOptions = RuntimeOptions()

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def heads_path(self) -> Path:
        return Path(self.out) / HEADS_NAME


def encoder_from_checkpoint(state: Mapping[str, Any], source: str) -> tuple[Encoder, dict[str, Any]]:
    """(encoder with the trained weights, the run's config) from a `selfcon` or `ce` checkpoint."""
    config = dict(state["config"])
    if config.get("kind") not in ("selfcon", "ce"):
        raise ValueError(f"{source} is not a selfcon or ce checkpoint (its config kind is {config.get('kind')!r})")
    encoder = build_model(config["arch"], feat_dim=config["feat_dim"]).encoder
    weights = {k[len(ENCODER_PREFIX):]: v for k, v in state["model"].items() if k.startswith(ENCODER_PREFIX)}
    encoder.load_state_dict(weights)
    return encoder, config


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> tuple[Detector, dict[str, Any]]:
    """(Detector in eval mode, its config) from a `heads.pt` written by `train_heads`."""
    state = load_checkpoint(path, map_location=device)
    config = dict(state["config"])
    if config.get("kind") != "linear":
        raise ValueError(f"{path} is not a heads checkpoint from `linear` (its config kind is "
                         f"{config.get('kind')!r})")
    encoder = build_model(config["encoder"]["arch"], feat_dim=config["encoder"]["feat_dim"]).encoder
    detector = Detector(encoder)
    detector.load_state_dict(state["model"])
    return detector.eval(), config


@dataclass(frozen=True)
class LinearResult:
    """The heads checkpoint and each epoch's stats."""

    heads: Path
    epochs: tuple[EpochStats, ...]


def train_heads(config: LinearConfig) -> LinearResult:
    """Train both heads on the frozen encoder (one process) and write `OUT/heads.pt`."""
    options = config.runtime
    options.apply_threads()
    torch.manual_seed(config.seed)
    runtime = options.runtime(dist.device_for(dist.DistEnv()))
    encoder, encoder_config = encoder_from_checkpoint(load_checkpoint(config.checkpoint), config.checkpoint)
    detector = runtime.prepare_model(Detector(encoder, adapt_bn=config.adapt_bn))
    loader = make_loader(config.data, backend=options.backend,
                         preset=get_preset("calibration", size=config.size), batch_size=config.batch_size,
                         rank=0, world_size=1, seed=config.seed, device=str(runtime.device),
                         workers=options.workers)
    heads = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(heads, lr=config.lr, weight_decay=config.weight_decay)
    log = RunLog(config.out)
    history = []
    try:
        for epoch in range(config.epochs):
            loader.set_epoch(epoch)
            stats = train_one_epoch(detector, HeadsObjective(), loader, optimizer, runtime=runtime,
                                    epoch=epoch, first_step=epoch * len(loader), progress=options.progress)
            log.write(stats.record(), global_step=(epoch + 1) * len(loader))
            history.append(stats)
            if options.progress:
                print(f"heads epoch {epoch}: loss {stats.loss:.4f}, {stats.images_per_s:.0f} images/s", flush=True)
    finally:
        log.close()
    state = build_checkpoint(model=detector, optimizer=optimizer, scheduler=None, epoch=config.epochs,
                             step=config.epochs * len(loader), loader={"epoch": config.epochs, "batch": 0},
                             config={"kind": "linear", **asdict(config), "encoder": encoder_config})
    save_checkpoint(state, config.heads_path)
    return LinearResult(heads=config.heads_path, epochs=tuple(history))

