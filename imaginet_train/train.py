"""`selfcon` and `ce` training runs: one frozen config, one `train(config)` call, torchrun-ready.

A run folder holds `checkpoint.pt` (model, optimizer, scheduler, epoch, loader position, RNG state,
the config as plain JSON), `metrics.jsonl` and, when tensorboard is installed, `tensorboard/`.

Exact resumption: the loader's order and perturbations are functions of (seed, epoch, rank, world
size), the model is initialised from `seed`, and checkpoints are taken at epoch boundaries; resuming
restores weights, optimizer, scheduler and RNG and restarts at the next epoch, so the resumed run
repeats the uninterrupted run's steps (bit for bit on the same hardware and thread count).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from imaginet_shards.augment.spec import get_preset
from imaginet_shards.loaders import make_loader

from . import dist
from .checkpoint import build_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .engine import EpochStats, RuntimeOptions, train_one_epoch
from .model import ARCHS, build_model
from .objectives import TRACKS, Classifier, CrossEntropyObjective, SelfConObjective
from .runlog import RunLog
from .schedule import LrSchedule

CHECKPOINT_NAME = "checkpoint.pt"
OBJECTIVES = ("selfcon", "ce")
LR_STEPS = ("batch", "epoch")
# Config fields that may change when resuming: they do not affect what is computed (of the runtime
# options, amp and channels_last do, and must match).
RESUMABLE_CHANGES = frozenset({"data", "resume", "checkpoint_every", "log_every"})
RUNTIME_FIXED = ("amp", "channels_last")
# `--recipe paper`: the ImagiNet authors' SelfCon run (their train.sh): 400 epochs of batch 200 at
# 256 px from torchvision's IMAGENET1K_V2 weights, SGD, a 10-epoch LinearLR warm-up from 1e-4 x lr,
# then cosine to 1e-3 x lr, the lr changing once per epoch.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(arch="resnet50nodown", pretrained="imagenet", epochs=400, batch_size=200, lr=0.005,
                  momentum=0.9, weight_decay=1e-4, temperature=0.07, warmup_epochs=10.0,
                  warmup_start_factor=1e-4, lr_step="epoch", crop=256),
}


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
    warmup_start_factor: float = 1e-4  # the warm-up's first lr is lr * this
    lr_step: Literal["batch", "epoch"] = "batch"  # lr changes every batch, or once per epoch
    temperature: float = 0.07
    crop: int = 96
    seed: int = 0
    sync_bn: bool = False  # SyncBatchNorm under DDP: BatchNorm statistics over the global batch
    checkpoint_every: int = 1
    log_every: int = 10
    resume: bool = False
    runtime: RuntimeOptions = RuntimeOptions()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.track not in TRACKS:
            raise ValueError(f"track must be one of {', '.join(TRACKS)}, got {self.track!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.lr_step not in LR_STEPS:
            raise ValueError(f"lr_step must be one of {', '.join(LR_STEPS)}, got {self.lr_step!r}")
        for name in ("epochs", "batch_size", "crop", "checkpoint_every", "log_every", "feat_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.warmup_start_factor <= 1:
            raise ValueError(f"warmup_start_factor must be in (0, 1], got {self.warmup_start_factor}")
        for name in ("momentum", "weight_decay", "warmup_epochs", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_recipe(cls, recipe: str | None, **options: Any) -> TrainConfig:
        """A config from a named recipe in RECIPES (None: the defaults); `options` override it."""
        if recipe is None:
            return cls(**options)
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        return cls(**{**RECIPES[recipe], **options})

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


def build_network(config: TrainConfig, distributed: bool = False
                  ) -> tuple[torch.nn.Module, SelfConObjective | CrossEntropyObjective]:
    """(model, objective) for `config.objective`: the SelfCon model, or the encoder with a linear
    classifier; with `sync_bn` under DDP, every BatchNorm becomes a SyncBatchNorm."""
    selfcon = build_model(config.arch, pretrained=config.pretrained, feat_dim=config.feat_dim)
    model: torch.nn.Module = selfcon
    objective: SelfConObjective | CrossEntropyObjective
    if config.objective == "selfcon":
        objective = SelfConObjective(config.temperature)
    else:
        objective = CrossEntropyObjective(config.track)
        model = Classifier(selfcon.encoder, objective.num_classes)
    if config.sync_bn and distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, objective


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's lr schedule, stepped after every batch (see `LrSchedule`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule(
        epochs=config.epochs, warmup_epochs=config.warmup_epochs, start_factor=config.warmup_start_factor,
        steps_per_epoch=steps_per_epoch, per_epoch=config.lr_step == "epoch"))


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training as configured; under torchrun, every rank calls this."""
    config.runtime.apply_threads()
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
    if config.sync_bn and env.distributed and device.type == "cpu":
        raise ValueError("sync_bn needs GPUs: torch's SyncBatchNorm does not run on CPU tensors")
    runtime = config.runtime.runtime(device)
    torch.manual_seed(config.seed)
    loader = make_loader(config.data, backend=config.runtime.backend,
                         preset=get_preset("train", crop=config.crop),
                         batch_size=config.batch_size // env.world_size, rank=env.rank,
                         world_size=env.world_size, seed=config.seed, device=str(device),
                         workers=config.runtime.workers)
    model, objective = build_network(config, distributed=env.distributed)
    model = runtime.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = len(loader)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
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
                                    on_step=on_step, progress=config.runtime.progress and env.is_main)
            log.write(stats.record(), global_step=(epoch + 1) * steps_per_epoch)
            if env.is_main and config.runtime.progress:
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
    changed = _changed_options(state["config"], config)
    if changed:
        raise ValueError(f"cannot resume {config.checkpoint_path}: options differ from the checkpoint's: "
                         + ", ".join(f"{k} (checkpoint {saved!r}, now {now!r})" for k, saved, now in changed))
    if state["loader"].get("batch", 0) != 0:
        raise ValueError(f"{config.checkpoint_path} was taken mid-epoch (batch {state['loader']['batch']}); "
                         "only epoch-boundary checkpoints can be resumed")
    restore_checkpoint(state, model=model, optimizer=optimizer, scheduler=scheduler)
    torch.set_rng_state(state["rng"].cpu())
    return int(state["loader"]["epoch"])



def _changed_options(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(name, saved, now) of every option that changes what is computed (runtime ones included)."""
    now = config.to_json()
    changed = [(f.name, saved.get(f.name), now[f.name]) for f in fields(config)
               if f.name not in RESUMABLE_CHANGES | {"runtime"} and saved.get(f.name) != now[f.name]]
    saved_runtime = saved.get("runtime") or {}
    changed += [(name, saved_runtime.get(name), now["runtime"][name]) for name in RUNTIME_FIXED
                if saved_runtime.get(name) != now["runtime"][name]]
    return changed
