"""`selfcon` and `ce` training runs: one frozen config, one `train(config)` call, torchrun-ready.

A run folder holds `checkpoint.pt` (model, optimizer, scheduler, epoch, loader position, RNG state,
the config as plain JSON), `metrics.jsonl` and, when tensorboard is installed, `tensorboard/`.

Exact resumption: the loader's order and perturbations are functions of (seed, epoch, rank, world
size), the model is initialised from `seed`, and checkpoints are taken at epoch boundaries; resuming
restores weights, optimizer, scheduler and RNG and restarts at the next epoch, so the resumed run
repeats the uninterrupted run's steps (bit for bit on the same hardware and thread count).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from imaginet_shards.augment.spec import get_preset
from imaginet_shards.loaders import Backend, make_loader

from . import dist
from .checkpoint import build_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .engine import Amp, EpochStats, Runtime, train_one_epoch
from .model import ARCHS, build_model
from .objectives import TRACKS, Classifier, CrossEntropyObjective, SelfConObjective
from .runlog import RunLog

CHECKPOINT_NAME = "checkpoint.pt"
OBJECTIVES = ("selfcon", "ce")
MIN_LR_FACTOR = 1e-3  # the cosine decays to lr * MIN_LR_FACTOR
# Config fields that may change when resuming: they do not affect what is computed.
RESUMABLE_CHANGES = frozenset({"data", "resume", "progress", "workers", "backend", "threads",
                               "checkpoint_every", "log_every"})


@dataclass(frozen=True)
class TrainConfig:
    """A `selfcon` or `ce` run. `batch_size` is global: each of k ranks loads batch_size / k."""

    data: str
    out: str
    objective: Literal["selfcon", "ce"] = "selfcon"
    track: Literal["origin", "family"] = "origin"  # ce only
    arch: str = "resnet50nodown"
    pretrained: str | None = None
    feat_dim: int = 128
    epochs: int = 30
    batch_size: int = 200
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    temperature: float = 0.07
    crop: int = 96
    seed: int = 0
    backend: Backend = "auto"
    workers: int = 4
    amp: Amp = "auto"
    channels_last: bool = True
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    checkpoint_every: int = 1
    log_every: int = 10
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.track not in TRACKS:
            raise ValueError(f"track must be one of {', '.join(TRACKS)}, got {self.track!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for name in ("epochs", "batch_size", "crop", "checkpoint_every", "log_every", "feat_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay", "warmup_epochs", "seed", "workers", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.out) / CHECKPOINT_NAME

    def to_json(self) -> dict[str, Any]:
        """The config as a plain JSON dict (stored in checkpoints), with `kind` = the objective."""
        return {"kind": self.objective, **asdict(self)}


@dataclass(frozen=True)
class TrainResult:
    """What `train` returns on every rank: the last epoch's stats and the checkpoint's path."""

    last: EpochStats | None  # None when a resumed run had no epoch left to train
    checkpoint: Path
    epochs_trained: int

    def summary(self) -> str:
        if self.last is None:
            return f"nothing left to train; checkpoint {self.checkpoint}"
        return (f"trained {self.epochs_trained} epoch(s); last epoch: loss {self.last.loss:.4f}, "
                f"{self.last.images_per_s:.0f} images/s, {self.last.data_fraction:.0%} of step time waiting "
                f"for data; checkpoint {self.checkpoint}")


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR factor at `step`: linear warm-up over `warmup` steps, then cosine down to MIN_LR_FACTOR."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


def build_network(config: TrainConfig) -> tuple[torch.nn.Module, SelfConObjective | CrossEntropyObjective]:
    """(model, objective) for `config.objective`: the SelfCon model, or the encoder with a linear classifier."""
    model = build_model(config.arch, pretrained=config.pretrained, feat_dim=config.feat_dim)
    if config.objective == "selfcon":
        return model, SelfConObjective(config.temperature)
    objective = CrossEntropyObjective(config.track)
    return Classifier(model.encoder, objective.num_classes), objective


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; under torchrun, every rank calls this."""
    if config.threads:
        torch.set_num_threads(config.threads)
    owns_group = not torch.distributed.is_initialized()
    env = dist.init_distributed()
    try:
        return _train(config, env)
    finally:
        if owns_group:
            dist.cleanup()


def _train(config: TrainConfig, env: dist.DistEnv) -> TrainResult:
    if config.batch_size % env.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the world size {env.world_size}")
    device = dist.device_for(env)
    runtime = Runtime.for_device(device, config.amp, config.channels_last)
    torch.manual_seed(config.seed)
    loader = make_loader(config.data, backend=config.backend, preset=get_preset("train", crop=config.crop),
                         batch_size=config.batch_size // env.world_size, rank=env.rank,
                         world_size=env.world_size, seed=config.seed, device=str(device),
                         workers=config.workers)
    model, objective = build_network(config)
    model = runtime.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        warmup_cosine, warmup=round(config.warmup_epochs * steps_per_epoch),
        total=config.epochs * steps_per_epoch))
    start_epoch = 0
    if config.resume:
        start_epoch = _resume(config, model, optimizer, scheduler, device)
    net = model
    if env.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = RunLog(config.out, enabled=env.is_main, keep_epochs_below=start_epoch if config.resume else None)

    def on_step(record) -> None:
        if record.step % config.log_every == 0:
            log.write(record.record(), global_step=record.step)

    stats = None
    try:
        for epoch in range(start_epoch, config.epochs):
            loader.set_epoch(epoch)
            stats = train_one_epoch(net, objective, loader, optimizer, runtime=runtime, epoch=epoch,
                                    first_step=epoch * steps_per_epoch, scheduler=scheduler,
                                    on_step=on_step, progress=config.progress and env.is_main)
            log.write(stats.record(), global_step=(epoch + 1) * steps_per_epoch)
            if env.is_main and config.progress:
                print(f"epoch {epoch}: loss {stats.loss:.4f}, {stats.images_per_s:.0f} images/s, "
                      f"{stats.data_fraction:.0%} of step time waiting for data", flush=True)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                _save(config, env, model, optimizer, scheduler, epoch + 1, steps_per_epoch)
    finally:
        log.close()
    return TrainResult(last=stats, checkpoint=config.checkpoint_path,
                       epochs_trained=config.epochs - start_epoch)


def _save(config: TrainConfig, env: dist.DistEnv, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, epochs_done: int, steps_per_epoch: int) -> None:
    """Rank 0 writes the checkpoint after `epochs_done` epochs; the others wait for it."""
    if env.is_main:
        state = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, epoch=epochs_done,
                                 step=epochs_done * steps_per_epoch,
                                 loader={"epoch": epochs_done, "batch": 0, "seed": config.seed},
                                 config=config.to_json(), extra={"rng": torch.get_rng_state()})
        save_checkpoint(state, config.checkpoint_path)
    dist.barrier()


def _resume(config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> int:
    """Restore everything from the run's checkpoint; returns the epoch to start from."""
    state = load_checkpoint(config.checkpoint_path, map_location=device)
    saved = state["config"]
    changed = sorted(f.name for f in fields(config) if f.name not in RESUMABLE_CHANGES
                     and saved.get(f.name) != getattr(config, f.name))
    if changed:
        raise ValueError(f"cannot resume {config.checkpoint_path}: options differ from the checkpoint's: "
                         + ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {getattr(config, k)!r})"
                                     for k in changed))
    if state["loader"].get("batch", 0) != 0:
        raise ValueError(f"{config.checkpoint_path} was taken mid-epoch (batch {state['loader']['batch']}); "
                         "only epoch-boundary checkpoints can be resumed")
    restore_checkpoint(state, model=model, optimizer=optimizer, scheduler=scheduler)
    torch.set_rng_state(state["rng"].cpu())
    return int(state["loader"]["epoch"])

