"""The trainer: a 2-rank torchrun SelfCon epoch on uneven shards, exact resumption, config checks,
objectives and the learning-rate schedule. Tiny images, the small arch, one thread per process."""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers.shardsets import build_shards
from helpers.torchrun import run_torchrun
from imaginet_train import runlog
from imaginet_train import train as train_module
from imaginet_train.checkpoint import load_checkpoint, save_checkpoint
from imaginet_train.engine import RuntimeOptions
from imaginet_train.model import build_model
from imaginet_train.objectives import Classifier, CrossEntropyObjective, HeadsObjective
from imaginet_train.runlog import read_records
from imaginet_train.schedule import MIN_LR_FACTOR, lr_factor
from imaginet_train.train import RECIPES, TrainConfig, build_network, build_scheduler, train

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
TIMING_FIELDS = {"seconds", "images_per_s", "data_fraction"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """20 small images in shards of 7, 7 and 6: neither shards nor samples divide evenly over 2 ranks.
    JPEG and WebP: a PNG would make each torchrun rank load the PNG window decoder's numba kernel."""
    return build_shards(tmp_path_factory.mktemp("train"), 20, max_count=7, sizes=(36, 48),
                        formats=("jpg", "webp"))


@contextlib.contextmanager
def _threads(count: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    with _threads(1):
        yield


def _config(shards: Path, out: Path, **overrides) -> TrainConfig:
    options = dict(data=str(shards), out=str(out), arch="small", feat_dim=16, epochs=2, batch_size=4,
                   crop=32, warmup_epochs=0.5, log_every=1,
                   runtime=RuntimeOptions(backend="cpu", workers=0, progress=False))
    return TrainConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> TrainConfig:
    """An uninterrupted two-epoch run (trained once, read by the resumption tests)."""
    config = _config(shards, tmp_path_factory.mktemp("straight"))
    with _threads(1):
        train(config)
    return config


@pytest.mark.slow
def test_torchrun_two_ranks_train_selfcon_on_uneven_shards(shards, tmp_path):
    out = tmp_path / "run"
    output = run_torchrun(["-m", "imaginet_train", "selfcon", str(shards), "--out", str(out), "--arch",
                           "small", "--epochs", "1", "--batch-size", "8", "--crop", "32", "--backend",
                           "cpu", "--workers", "0", "--threads", "1", "--no-progress"], timeout=TIMEOUT_S)
    assert output.count("trained 1 epoch(s)") == 1, output[-2000:]  # rank 0 reports, rank 1 does not
    [epoch] = read_records(out, "epoch")
    # 20 samples, 2 ranks x 4 per rank: 2 batches per rank, 16 images in all, 4 dropped.
    assert (epoch["epoch"], epoch["steps"], epoch["images"]) == (0, 2, 16)
    assert math.isfinite(epoch["loss"]) and 0 <= epoch["data_fraction"] <= 1
    state = load_checkpoint(out / "checkpoint.pt")
    assert (state["epoch"], state["loader"]["epoch"], state["config"]["kind"]) == (1, 1, "selfcon")


def _losses(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_records(folder)]


def _crash_in_epoch_1(monkeypatch, config: TrainConfig) -> None:
    """Run `config` and crash it in epoch 1 (5 steps of 4 per epoch) as it logs global step 6."""
    write = runlog.RunLog.write

    def crash(self, record, **kwargs):
        if record["kind"] == "step" and record["epoch"] == 1 and record["step"] > 5:
            raise KeyboardInterrupt("simulated preemption")
        write(self, record, **kwargs)

    monkeypatch.setattr(runlog.RunLog, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(runlog.RunLog, "write", write)


@pytest.mark.slow
@pytest.mark.parametrize("every_steps, saved_step", [(0, 5), (3, 6)])
def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_losses(shards, straight, tmp_path,
                                                                         monkeypatch, every_steps, saved_step):
    # Crash in the middle of epoch 1, after the checkpoint of epoch 0's end (every_steps 0) or of
    # global step 6, the middle of epoch 1 (every 3 steps: 3, the end of epoch 0, 6).
    interrupted = _config(shards, tmp_path / "resumed", checkpoint_every_steps=every_steps)
    _crash_in_epoch_1(monkeypatch, interrupted)
    saved = load_checkpoint(interrupted.checkpoint_path)
    assert (saved["epoch"], saved["step"], saved["loader"]["epoch"]) == (1, saved_step, 1)
    assert (saved["progress"] or {}).get("steps") == (None if every_steps == 0 else 1)  # epoch 1's steps
    assert read_records(interrupted.out)[-1]["step"] == 5  # dropped on resume when after the checkpoint

    result = train(replace(interrupted, resume=True))
    assert result.epochs_trained == 1
    expected, got = _losses(Path(straight.out)), _losses(Path(interrupted.out))
    assert [r["kind"] for r in expected] == ["step"] * 5 + ["epoch"] + ["step"] * 5 + ["epoch"]
    assert got == expected  # exact: same steps, same data, same arithmetic
    final = [load_checkpoint(c.checkpoint_path)["model"] for c in (straight, interrupted)]
    for name, tensor in final[0].items():
        torch.testing.assert_close(final[1][name], tensor, rtol=0, atol=0, msg=name)


def test_resume_refuses_changed_options(shards, tmp_path):
    config = _config(shards, tmp_path / "run", epochs=1)
    train(config)
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's: lr"):
        train(replace(config, lr=0.1, resume=True))
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's: amp \(checkpoint 'auto'"):
        train(replace(config, runtime=replace(config.runtime, amp="off"), resume=True))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train(replace(config, out=str(tmp_path / "empty"), resume=True))
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's: batch_size \(checkpoint 4, now 8\)"):
        train(replace(config, batch_size=8, resume=True))
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's: seed \(checkpoint 0, now 1\)"):
        train(replace(config, seed=1, resume=True))


def test_resume_refuses_another_shard_set(shards, tmp_path):
    config = _config(shards, tmp_path / "run", epochs=1)
    train(config)
    other = build_shards(tmp_path / "other", 20, max_count=7, sizes=(36, 48), seed=5)
    with pytest.raises(ValueError, match=r"cannot resume .*checkpoint.pt: .*shard_set \(saved '[0-9a-f]{64}', now "):
        train(replace(config, data=str(other), resume=True))


@pytest.mark.slow
def test_epoch_boundary_checkpoints_of_the_earlier_format_still_resume(shards, straight, tmp_path, monkeypatch):
    config = _config(shards, tmp_path / "old")
    _crash_in_epoch_1(monkeypatch, config)
    state = load_checkpoint(config.checkpoint_path)  # epoch 0's, rewritten as format 1 wrote it
    old = {**{k: v for k, v in state.items() if k not in ("progress", "world_size")}, "format_version": 1,
           "loader": {"epoch": 1, "batch": 0, "seed": 0}, "rng": state["rng"][0]["torch"]}
    save_checkpoint(old, config.checkpoint_path)
    train(replace(config, resume=True))
    assert _losses(Path(config.out)) == _losses(Path(straight.out))
    save_checkpoint({**old, "loader": {"epoch": 1, "batch": 2, "seed": 0}}, config.checkpoint_path)
    with pytest.raises(ValueError, match="taken mid-epoch by an earlier version"):
        train(replace(config, resume=True))


def test_ce_trains_on_the_family_track(shards, tmp_path):
    result = train(_config(shards, tmp_path / "ce", objective="ce", track="family", epochs=1, batch_size=8))
    state = load_checkpoint(result.checkpoint)
    assert state["config"]["kind"] == "ce" and state["model"]["fc.weight"].shape[0] == 4
    assert math.isfinite(result.last.loss)


@pytest.mark.parametrize("overrides, match", [
    ({"objective": "byol"}, "objective must be one of selfcon, ce"),
    ({"track": "content"}, "track must be one of origin, family"),
    ({"arch": "vit"}, "unknown arch 'vit'"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
    ({"lr_step": "step"}, "lr_step must be one of batch, epoch"),
    ({"warmup_start_factor": 0.0}, r"warmup_start_factor must be in \(0, 1\]"),
    ({"runtime": {"amp": "fp16"}}, "amp must be 'auto', 'bf16' or 'off'"),
])
def test_config_rejects_bad_options(overrides, match):
    with pytest.raises(ValueError, match=match):
        if "runtime" in overrides:
            overrides = {"runtime": RuntimeOptions(**overrides["runtime"])}
        TrainConfig(data="d", out="o", **overrides)


def test_distributed_preconditions_are_checked_before_training(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.dist, "init_distributed",
                        lambda: train_module.dist.DistEnv(rank=0, world_size=3))
    with pytest.raises(ValueError, match=r"the global batch_size 4 cannot be split evenly over 3 ranks; run on a number of processes that divides it \(1, 2, 4\)"):
        train(_config(shards, tmp_path / "run"))
    monkeypatch.setattr(train_module.dist, "init_distributed",
                        lambda: train_module.dist.DistEnv(rank=0, world_size=2))
    with pytest.raises(ValueError, match="sync_bn needs GPUs"):
        train(_config(shards, tmp_path / "run", sync_bn=True))


def test_warmup_then_cosine():
    factors = [lr_factor(e / 2, epochs=10, warmup_epochs=2, start_factor=0.25) for e in range(21)]
    assert factors[:5] == [0.25, 0.4375, 0.625, 0.8125, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # non-increasing after warm-up
    assert factors[-1] == pytest.approx(MIN_LR_FACTOR)
    assert lr_factor(0, epochs=10, warmup_epochs=0, start_factor=0.5) == 1.0


def _reference_lrs(lr: float, epochs: int, warmup: int) -> list[float]:
    """The lr of every epoch under the reference's per-epoch SequentialLR (torch's own schedulers)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-4, end_factor=1, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs - warmup, eta_min=lr * 1e-3)],
        milestones=[warmup])
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("lr_step", ["epoch", "batch"])
def test_paper_recipe_lr_equals_the_reference_at_every_epoch_boundary(lr_step):
    config = TrainConfig.from_recipe("paper", data="d", out="o", lr_step=lr_step)
    assert (config.epochs, config.batch_size, config.lr, config.momentum, config.weight_decay,
            config.temperature, config.pretrained) == (400, 200, 0.005, 0.9, 1e-4, 0.07, "imagenet")
    expected = _reference_lrs(config.lr, config.epochs, warmup=10)
    steps_per_epoch = 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    within = []
    for _ in range(config.epochs):
        within.append([optimizer.param_groups[0]["lr"]])
        for _ in range(steps_per_epoch):
            optimizer.step()
            scheduler.step()
            within[-1].append(optimizer.param_groups[0]["lr"])
    assert [w[0] for w in within] == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(0.005 * 1e-4) and expected[10] == pytest.approx(0.005)
    constant = all(w[0] == w[1] == w[2] for w in within)
    assert constant == (lr_step == "epoch")  # per epoch: held for the epoch; per batch: moving


def test_recipe_options_can_be_overridden_and_unknown_recipes_are_refused():
    config = TrainConfig.from_recipe("paper", data="d", out="o", epochs=3)
    assert config.epochs == 3 and config.lr_step == RECIPES["paper"]["lr_step"] == "epoch"
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        TrainConfig.from_recipe("fast", data="d", out="o")


def test_cli_recipe_keeps_explicit_options(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from imaginet_train import cli
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config: seen.append(config) or
                        train_module.TrainResult(last=None, checkpoint=config.checkpoint_path, epochs_trained=0))
    result = CliRunner().invoke(cli.main, ["selfcon", "data", "--out", str(tmp_path), "--recipe", "paper",
                                           "--epochs", "2", "--workers", "0", "--no-progress",
                                           "--checkpoint-every-steps", "500"])
    assert result.exit_code == 0, result.output
    [config] = seen
    assert (config.epochs, config.batch_size, config.lr_step, config.crop, config.pretrained) == (
        2, 200, "epoch", 256, "imagenet")
    assert (config.checkpoint_every_steps, config.key_log) == (500, None)
    assert config.runtime == RuntimeOptions(workers=0, progress=False)


def test_sync_bn_converts_every_batch_norm_under_ddp_only():
    config = TrainConfig(data="d", out="o", arch="small", feat_dim=8, sync_bn=True)
    model, _ = build_network(config, distributed=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    single, _ = build_network(config, distributed=False)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in single.modules())


def _labels(origin, family):
    origin, family = torch.tensor(origin), torch.tensor(family)
    zeros = torch.zeros_like(origin)
    return torch.stack([origin, zeros, family, zeros], 1)


def test_family_objectives_ignore_real_rows_and_survive_batches_without_synthetic_ones():
    torch.manual_seed(0)
    model = Classifier(build_model("small", feat_dim=8).encoder, 4).eval()
    images = torch.randn(4, 3, 16, 16)
    family = CrossEntropyObjective("family")
    mixed = _labels([1, 0, 1, 0], [2, 4, 3, 4])
    logits = model(images)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([2, 3]))
    torch.testing.assert_close(family(model, images, mixed), expected)
    real_only = family(model, images, _labels([0] * 4, [4] * 4))
    assert real_only.item() == 0.0 and real_only.requires_grad
    heads = HeadsObjective()
    both = lambda x: (model(x)[:, 0], model(x))  # noqa: E731  (origin logit, family logits)
    assert math.isfinite(heads(both, images, _labels([0] * 4, [4] * 4)).item())


def test_checkpoints_take_the_loader_position_only_when_it_matches_the_steps(shards):
    from imaginet_shards.loaders import make_loader
    loader = make_loader(str(shards), backend="cpu", batch_size=4, rank=0, world_size=1, workers=0,
                         device="cpu")
    batches = loader.batches()
    next(batches), next(batches)  # two of the epoch's 5 steps
    position = train_module._position(loader, step=2, steps_per_epoch=5, batch_size=4)
    assert (position["epoch"], position["delivered"]) == (0, 8)
    with pytest.raises(RuntimeError, match=r"CpuLoader's state \(epoch 0, 8 samples delivered\) does not "
                                           r"match the training's \(epoch 0, 12 samples\)"):
        train_module._position(loader, step=3, steps_per_epoch=5, batch_size=4)
    for _ in batches:
        pass
    position = train_module._position(loader, step=5, steps_per_epoch=5, batch_size=4)
    assert (position["epoch"], position["delivered"], position["legs"]) == (1, 0, [])
    loader.close()
