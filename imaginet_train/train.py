"""`selfcon` and `ce` training runs: one frozen config, one `train(config)` call, torchrun-ready.

A run folder holds `checkpoint.pt` (model, optimizer, scheduler, the loader's `state_dict`, every
rank's RNG states, the interrupted epoch's running sums, the config as plain JSON), `metrics.jsonl`
and, when tensorboard is installed, `tensorboard/`.

Exact resumption: the loader's order and perturbations are functions of (seed, epoch, world size,
batch size) and of where an interrupted epoch stopped; checkpoints are taken at epoch boundaries and,
with `checkpoint_every_steps`, every N steps. Resuming restores everything and continues with the
next batch of the interrupted epoch: on the same world size the run repeats the uninterrupted run's
steps (bit for bit on the same hardware and thread count); on another world size the global batch
stays the same and the rest of the epoch is shared over the new ranks (each sample still once).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from imaginet_shards.augment.spec import get_preset
from imaginet_shards.loaders import Loader, make_loader

from . import dist
from .catalog import ARCHS, RECIPES
from .checkpoint import build_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .engine import EpochProgress, EpochStats, RuntimeOptions, StepRecord, train_one_epoch
from .model import build_model
from .objectives import TRACKS, Classifier, CrossEntropyObjective, SelfConObjective
from .resume import KeyLog, check_world, gathered_rng_states, restore_rank_rng
from .runlog import RunLog
from .schedule import LrSchedule

CHECKPOINT_NAME = "checkpoint.pt"
OBJECTIVES = ("selfcon", "ce")
LR_STEPS = ("batch", "epoch")
# Config fields that may change when resuming: they do not affect what is computed (of the runtime
# options, amp and channels_last do, and must match). A moved data or run folder may be resumed;
# the loader state checks that the data is the same shard set.
RESUMABLE_CHANGES = frozenset({"data", "out", "resume", "auto_resume", "checkpoint_every",
                               "checkpoint_every_steps", "log_every", "key_log"})
RUNTIME_FIXED = ("amp", "channels_last")


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
    checkpoint_every_steps: int = 0  # also a checkpoint every N global steps (0: epoch boundaries only)
    log_every: int = 10
    resume: bool = False
    auto_resume: bool = False  # resume when OUT/checkpoint.pt exists, else start (for restarting schedulers)
    key_log: str | None = None  # test mode: every rank logs each step's sample keys here (KeyLog)
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
        for name in ("momentum", "weight_decay", "warmup_epochs", "seed", "checkpoint_every_steps"):
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
    check_world(config.batch_size, env.world_size)
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
    steps_per_epoch = len(loader)  # the same on any world size: the global batch is fixed
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    start = _Start()
    resume = config.resume or (config.auto_resume and config.checkpoint_path.is_file())
    if resume:
        start = _resume(config, env, model, optimizer, scheduler, loader, device)
    net = model
    if env.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = RunLog(config.out, enabled=env.is_main,
                 keep_before=(start.epoch, start.step) if resume else None)
    keys = None if config.key_log is None else KeyLog(config.key_log, env.rank, env.world_size)
    every = config.checkpoint_every_steps

    def save(step: int, progress: EpochProgress | None) -> None:
        _save(config, env, model, optimizer, scheduler, _position(loader, step, steps_per_epoch,
                                                                   config.batch_size), step, progress, device)

    def on_step(record: StepRecord, progress: EpochProgress) -> None:
        if record.step % config.log_every == 0:
            log.write(record.record(), global_step=record.step)
        if keys is not None:
            keys.write(record.epoch, record.step)
        if every and (record.step + 1) % every == 0 and progress.steps < steps_per_epoch:
            save(record.step + 1, progress)  # mid-epoch; the epoch's end is saved below

    stats = None
    try:
        for epoch in range(start.epoch, config.epochs):
            loader.set_epoch(epoch)  # a resumed epoch keeps its loaded position
            batches = loader if keys is None else keys.batches(loader)  # type: ignore[arg-type]
            stats = train_one_epoch(net, objective, batches, optimizer, runtime=runtime, epoch=epoch,
                                    first_step=epoch * steps_per_epoch, scheduler=scheduler,
                                    on_step=on_step, progress=config.runtime.progress and env.is_main,
                                    resumed=start.progress if epoch == start.epoch else None)
            done = (epoch + 1) * steps_per_epoch
            log.write(stats.record(), global_step=done)
            if env.is_main and config.runtime.progress:
                print(f"epoch {epoch}: loss {stats.loss:.4f}, {stats.images_per_s:.0f} images/s, "
                      f"{stats.data_fraction:.0%} of step time waiting for data", flush=True)
            if ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs
                    or (every and done % every == 0)):
                save(done, None)
    finally:
        log.close()
    return TrainResult(last=stats, checkpoint=config.checkpoint_path,
                       epochs_trained=config.epochs - start.epoch)


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its first epoch and global step, and that epoch's progress when resumed
    mid-epoch."""

    epoch: int = 0
    step: int = 0
    progress: EpochProgress | None = None


def _save(config: TrainConfig, env: dist.DistEnv, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, position: dict[str, Any], step: int,
          progress: EpochProgress | None, device: torch.device) -> None:
    """Every rank hands over its RNG states, rank 0 writes the checkpoint after global step `step`
    (`position`: the loader's state; `progress`: the epoch's so far, None at its end), and the
    others wait for it."""
    rng = gathered_rng_states(device)
    if env.is_main:
        state = build_checkpoint(model=model, optimizer=optimizer, scheduler=scheduler,
                                 epoch=position["epoch"], step=step, loader=position,
                                 config=config.to_json(),
                                 extra={"rng": rng, "world_size": env.world_size,
                                        "progress": None if progress is None else progress.to_json()})
        save_checkpoint(state, config.checkpoint_path)
    dist.barrier()


def _position(loader: Loader, step: int, steps_per_epoch: int, batch_size: int) -> dict[str, Any]:
    """The loader's state after global step `step` (at an epoch's end: the next epoch's start),
    checked against the steps taken: a loader that does not count what it delivered would make a
    resumed run repeat or skip samples."""
    epoch, done = divmod(step, steps_per_epoch)
    if done == 0:
        loader.set_epoch(epoch)  # the epoch that follows, from its start
    position = loader.state_dict()  # the same on every rank
    found = (position["epoch"], position["delivered"])
    if found != (epoch, done * batch_size):
        raise RuntimeError(f"{type(loader).__name__}'s state (epoch {found[0]}, {found[1]} samples "
                           f"delivered) does not match the training's (epoch {epoch}, "
                           f"{done * batch_size} samples): it cannot be checkpointed mid-epoch")
    return position


def _resume(config: TrainConfig, env: dist.DistEnv, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, loader: Loader, device: torch.device) -> _Start:
    """Restore everything from the run's checkpoint (the loader's position first: it refuses a
    checkpoint of another shard set or order); returns where to start."""
    path = config.checkpoint_path
    state = load_checkpoint(path, map_location="cpu")
    changed = _changed_options(state["config"], config)
    if changed:
        raise ValueError(f"cannot resume {path}: options differ from the checkpoint's: "
                         + ", ".join(f"{k} (checkpoint {saved!r}, now {now!r})" for k, saved, now in changed))
    position = state["loader"]
    if state["format_version"] == 1:  # an epoch-boundary checkpoint of an earlier version
        if position.get("batch", 0) != 0:
            raise ValueError(f"{path} was taken mid-epoch by an earlier version, which cannot be resumed")
        restore_checkpoint(state, model=model, optimizer=optimizer, scheduler=scheduler)
        torch.set_rng_state(state["rng"].cpu())
        return _Start(int(position["epoch"]), int(state["step"]))
    try:
        loader.load_state_dict(position)
    except ValueError as err:
        raise ValueError(f"cannot resume {path}: {err}") from None
    restore_checkpoint(state, model=model, optimizer=optimizer, scheduler=scheduler)
    restore_rank_rng(state["rng"], env.rank, device)
    progress = None if state["progress"] is None else EpochProgress.from_json(state["progress"])
    return _Start(int(position["epoch"]), int(state["step"]), progress)


def _changed_options(saved: dict[str, Any], config: TrainConfig) -> list[tuple[str, Any, Any]]:
    """(name, saved, now) of every option that changes what is computed (runtime ones included)."""
    now = config.to_json()
    changed = [(f.name, saved.get(f.name), now[f.name]) for f in fields(config)
               if f.name not in RESUMABLE_CHANGES | {"runtime"} and saved.get(f.name) != now[f.name]]
    saved_runtime = saved.get("runtime") or {}
    changed += [(name, saved_runtime.get(name), now["runtime"][name]) for name in RUNTIME_FIXED
                if saved_runtime.get(name) != now["runtime"][name]]
    return changed
