"""Classifier heads on a frozen encoder, evaluation outputs and sweeps, the metric functions, the CLI."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from helpers.shardsets import build_shards
from imaginet_shards.augment.spec import get_preset
from imaginet_train.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from imaginet_train.cli import main
from imaginet_train.evaluate import (
    METRIC_KEYS,
    Condition,
    EvalConfig,
    Predictions,
    evaluate,
    per_group,
    score,
)
from imaginet_train.linear import LinearConfig, load_detector, train_heads
from imaginet_train.metrics import average_precision, balanced_accuracy, confusion_matrix, roc_auc
from imaginet_train.model import build_model
from imaginet_train.train import TrainConfig

RUNTIME = dict(backend="cpu", workers=0, threads=1, progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("heads"), 24, max_count=10, sizes=(36, 48))


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory) -> Path:
    """A `selfcon` checkpoint of an untrained small model (the heads do not care how it was trained)."""
    torch.manual_seed(0)
    model = build_model("small", feat_dim=16)
    config = TrainConfig(data="unused", out="unused", arch="small", feat_dim=16)
    state = build_checkpoint(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None,
                             epoch=1, step=1, loader={"epoch": 1, "batch": 0}, config=config.to_json())
    return save_checkpoint(state, tmp_path_factory.mktemp("encoder") / "checkpoint.pt")


@pytest.fixture(scope="module")
def heads(shards, encoder_checkpoint, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    config = LinearConfig(checkpoint=str(encoder_checkpoint), data=str(shards),
                          out=str(tmp_path_factory.mktemp("linear")), epochs=2, batch_size=8, size=32, **RUNTIME)
    result = train_heads(config)
    assert len(result.epochs) == 2 and all(math.isfinite(e.loss) for e in result.epochs)
    return result.heads


def test_heads_train_on_a_frozen_encoder(heads, encoder_checkpoint):
    before = load_checkpoint(encoder_checkpoint)["model"]
    detector, config = load_detector(heads)
    assert config["kind"] == "linear" and config["encoder"]["arch"] == "small"
    for name, tensor in detector.encoder.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(tensor, before[f"encoder.{name}"], rtol=0, atol=0, msg=name)
    assert not any(p.requires_grad for p in detector.encoder.parameters())
    assert not detector.train().encoder.training  # stays in eval mode
    origin, family = detector.eval()(torch.randn(3, 3, 32, 32))
    assert origin.shape == (3,) and family.shape == (3, 4)


def test_linear_refuses_a_heads_checkpoint_as_encoder(heads, shards, tmp_path):
    with pytest.raises(ValueError, match="not a selfcon or ce checkpoint"):
        train_heads(LinearConfig(checkpoint=str(heads), data=str(shards), out=str(tmp_path), **RUNTIME))


def test_evaluate_writes_every_metric_table_and_plot(heads, shards, tmp_path):
    config = EvalConfig(checkpoint=str(heads), data=str(shards), out=str(tmp_path / "eval"), size=32,
                        batch_size=10, jpeg_qualities=(40, 90), resize_scales=(0.5, 1.5), **RUNTIME)
    result = evaluate(config)
    assert result.metrics["count"] == 24  # drop_last=False: every test image is scored once
    document = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for key in (*METRIC_KEYS, "family_confusion_matrix", "per_group", "sweeps", "config", "detector"):
        assert key in document, key
    assert np.asarray(document["family_confusion_matrix"]).sum() == result.metrics["synthetic"]
    with open(tmp_path / "eval" / "sweeps.csv") as f:
        sweeps = list(csv.DictReader(f))
    assert [(r["sweep"], float(r["value"])) for r in sweeps] == [("jpeg", 40), ("jpeg", 90), ("resize", 0.5),
                                                                 ("resize", 1.5)]
    assert set(METRIC_KEYS) <= set(sweeps[0])
    with open(tmp_path / "eval" / "per_group.csv") as f:
        groups = {(r["group"], r["name"]) for r in csv.DictReader(f)}
    assert ("content", "photos") in groups and any(g == "generator" for g, _ in groups)
    for name in ("sweep_jpeg.png", "sweep_resize.png", "family_confusion.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = result.summary()
    assert "origin: ROC AUC" in summary and len(summary.splitlines()) < 30


def test_conditions_recode_and_resize_crops():
    preset = get_preset("eval", size=32)
    mean, std = torch.tensor(preset.mean).view(1, 3, 1, 1), torch.tensor(preset.std).view(1, 3, 1, 1)
    flat = ((torch.full((2, 3, 32, 32), 0.5) - mean) / std)
    jpeg = Condition("jpeg", 90).apply(flat, preset)
    assert jpeg.shape == flat.shape and torch.allclose(jpeg, flat, atol=2 / 255 / 0.224)  # flat survives JPEG
    noisy = flat + torch.randn_like(flat)
    assert not torch.allclose(Condition("jpeg", 40).apply(noisy, preset), noisy, atol=0.1)
    assert Condition("resize", 0.5).apply(flat, preset).shape == (2, 3, 16, 16)
    assert Condition("clean").apply(flat, preset) is flat


def test_per_group_pairs_each_generator_with_all_real_images():
    labels = np.array([[0, 0, 4, 8], [0, 2, 4, 8], [1, 0, 0, 0], [1, 2, 1, 3], [1, 2, 1, 3]])
    predictions = Predictions(labels, np.array([0.1, 0.6, 0.9, 0.7, 0.2]), np.array([0, 0, 0, 1, 0]))
    rows = {(r["group"], r["name"]): r for r in per_group(predictions)}
    assert set(rows) == {("generator", "ProGAN"), ("generator", "SD v2.1"), ("content", "photos"),
                         ("content", "faces")}
    sd = rows[("generator", "SD v2.1")]
    assert (sd["count"], sd["real"], sd["synthetic"]) == (4, 2, 2)
    assert sd["origin_auc"] == roc_auc_score([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.2])
    assert sd["family_balanced_accuracy"] == 0.5
    assert score(predictions)["family_balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)


# --- metric functions against scikit-learn ------------------------------------------------------------

def test_metrics_match_sklearn_on_known_inputs():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.4, 0.2])  # with ties across classes
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75  # by hand
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    assert balanced_accuracy(truth, pred, 4) == pytest.approx(balanced_accuracy_score(truth, pred))
    np.testing.assert_array_equal(confusion_matrix(truth, pred, 4), sk_confusion_matrix(truth, pred, labels=range(4)))
    # classes absent from y_true do not count (scikit-learn's definition)
    assert balanced_accuracy(np.array([0, 0, 2]), np.array([0, 1, 2]), 4) == pytest.approx(0.75)


def test_undefined_metrics_are_nan():
    assert math.isnan(roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(balanced_accuracy(np.array([], dtype=int), np.array([], dtype=int), 4))
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(np.array([4]), np.array([0]), 4)
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc(np.array([0, 1]), np.array([0.5]))


# --- the CLI ------------------------------------------------------------------------------------------

def test_cli_lists_the_four_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("selfcon", "ce", "linear", "evaluate"):
        assert command in result.output


def test_cli_evaluate_parses_sweeps(heads, shards, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["evaluate", str(heads), str(shards), "--out", str(out), "--size", "32",
                                       "--jpeg-qualities", "50:60:5", "--resize-scales", "none",
                                       "--backend", "cpu", "--workers", "0", "--threads", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    sweeps = json.loads((out / "evaluation.json").read_text())["sweeps"]
    assert [(s["sweep"], s["value"]) for s in sweeps] == [("jpeg", 50), ("jpeg", 55), ("jpeg", 60)]
    bad = CliRunner().invoke(main, ["evaluate", str(heads), str(shards), "--out", str(out),
                                    "--jpeg-qualities", "a:b"])
    assert bad.exit_code != 0 and "expected 'a,b,c'" in bad.output


def test_detector_is_plain_module_state(heads):
    """The heads checkpoint loads with weights_only=True (no pickled objects)."""
    state = torch.load(heads, weights_only=True)
    assert isinstance(state["config"], dict)
    json.dumps(state["config"])
