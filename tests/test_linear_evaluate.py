"""Classifier heads on a frozen encoder (BatchNorm re-estimation), Platt scaling, the paper's tables,
the reference-shaped sweeps, evaluation outputs, the metric functions, the CLI."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from helpers.shardsets import build_shards
from imaginet_shards.format.annotations import read_annotations
from imaginet_train import reports
from imaginet_train.calibrate import fit_platt
from imaginet_train.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from imaginet_train.cli import main
from imaginet_train.engine import RuntimeOptions
from imaginet_train.evaluate import EvalConfig, evaluate
from imaginet_train.linear import LinearConfig, load_detector, train_heads
from imaginet_train.metrics import (
    average_precision,
    balanced_accuracy,
    confusion_matrix,
    multiclass_auc,
    roc_auc,
)
from imaginet_train.model import build_model
from imaginet_train.sweeps import Condition, centre_crop, lanczos
from imaginet_train.train import TrainConfig

RUNTIME = RuntimeOptions(backend="cpu", workers=0, threads=1, progress=False)
CLI_RUNTIME = ["--backend", "cpu", "--workers", "0", "--threads", "1", "--no-progress"]


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


def _linear(encoder_checkpoint: Path, shards: Path, out: Path, **overrides) -> LinearConfig:
    return LinearConfig(**{**dict(checkpoint=str(encoder_checkpoint), data=str(shards), out=str(out), epochs=2,
                                  batch_size=8, size=32, runtime=RUNTIME), **overrides})


@pytest.fixture(scope="module")
def heads(shards, encoder_checkpoint, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    result = train_heads(_linear(encoder_checkpoint, shards, tmp_path_factory.mktemp("linear")))
    assert len(result.epochs) == 2 and all(math.isfinite(e.loss) for e in result.epochs)
    return result.heads


def _batch_norm_stats(state: dict, prefix: str = "") -> dict:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and k.endswith(("running_mean", "running_var"))}


def test_linear_re_estimates_batch_norm_statistics_and_evaluation_uses_them(heads, encoder_checkpoint, shards,
                                                                             tmp_path):
    before = load_checkpoint(encoder_checkpoint)["model"]
    saved = load_checkpoint(heads)["model"]
    detector, config = load_detector(heads)
    assert config["kind"] == "linear" and config["encoder"]["arch"] == "small" and config["adapt_bn"]
    stats = _batch_norm_stats(detector.encoder.state_dict())
    assert stats and set(stats) == set(_batch_norm_stats(before, "encoder."))
    changed = [k for k, v in stats.items() if not torch.equal(v, before[f"encoder.{k}"])]
    assert len(changed) == len(stats)  # every running statistic was re-estimated on the calibration data
    for name, tensor in detector.encoder.state_dict().items():
        if name.endswith(".weight") or name.endswith(".bias"):  # the weights stay frozen
            torch.testing.assert_close(tensor, before[f"encoder.{name}"], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(tensor, saved[f"encoder.{name}"], rtol=0, atol=0, msg=name)  # restored
    assert not any(p.requires_grad for p in detector.encoder.parameters())
    trained = detector.train()
    assert not trained.encoder.training and all(
        m.training for m in trained.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    origin, family = detector.eval()(torch.randn(3, 3, 32, 32))
    assert origin.shape == (3,) and family.shape == (3, 4)
    assert not any(m.training for m in detector.modules())
    # Without adaptation the pre-training statistics are kept.
    frozen = train_heads(_linear(encoder_checkpoint, shards, tmp_path / "frozen", epochs=1, adapt_bn=False))
    kept = _batch_norm_stats(load_detector(frozen.heads)[0].encoder.state_dict())
    assert all(torch.equal(v, before[f"encoder.{k}"]) for k, v in kept.items())


def test_linear_refuses_a_heads_checkpoint_as_encoder(heads, shards, tmp_path):
    with pytest.raises(ValueError, match="not a selfcon or ce checkpoint"):
        train_heads(LinearConfig(checkpoint=str(heads), data=str(shards), out=str(tmp_path), runtime=RUNTIME))


def _family_files(shards: Path, tmp_path: Path) -> tuple[tuple[str, str], ...]:
    """Per-family annotation files as the authors': each family's synthetic rows and the real rows."""
    lines = (shards.parent / "src" / "annotations.txt").read_text().splitlines()
    files = []
    for family, name in enumerate(reports.FAMILY_FILE_NAMES):
        rows = [line for line in lines if line.split(",")[3] in (str(family), "4")]
        if any(line.split(",")[3] == str(family) for line in rows):
            path = tmp_path / f"test_annotations_{name}.txt"
            path.write_text("\n".join(rows) + "\n")
            files.append((name, str(path)))
    return tuple(files)


def test_evaluate_writes_the_paper_tables_sweeps_and_plots(heads, shards, tmp_path):
    files = _family_files(shards, tmp_path)
    config = EvalConfig(checkpoint=str(heads), data=str(shards), out=str(tmp_path / "eval"), size=32,
                        batch_size=10, platt=str(shards), family_files=files, jpeg_qualities=(40, 90),
                        resize_divisors=(6, 12), runtime=RUNTIME)
    result = evaluate(config)
    assert result.metrics["count"] == 24 and result.platt is not None and result.platt.count == 24
    origin = result.tables["origin"]
    assert [r["name"] for r in origin[:-1]] == [reports.family_label(n) for n, _ in files]
    assert origin[-1]["name"] == "Mean"
    assert origin[-1]["auc"] == pytest.approx(np.mean([r["auc"] for r in origin[:-1]]), nan_ok=True)
    for row, (_, file) in zip(origin, files):
        frame = read_annotations(file)
        assert (row["count"], row["real"]) == (len(frame), int((frame["origin"] == 0).sum()))
    for row in result.tables["generators"][:-1]:
        assert row["real"] == min(row["synthetic"], result.metrics["real"])
    document = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(document["tables"]) == {"origin", "generators", "content", "identification"}
    assert document["platt"]["count"] == 24 and document["config"]["family_files"]
    with open(tmp_path / "eval" / "sweeps.csv") as f:
        sweeps = list(csv.DictReader(f))
    assert [(r["sweep"], float(r["x"])) for r in sweeps] == [("jpeg", 40), ("jpeg", 90), ("resize", 2),
                                                             ("resize", 1)]
    assert {"origin_balanced_accuracy", "origin_auc", "family_accuracy"} <= set(sweeps[0])
    for name in ("origin", "generators", "content", "identification"):
        assert (tmp_path / "eval" / f"{name}.csv").read_text().startswith("name,"), name
    for name in ("sweep_jpeg.png", "sweep_resize.png", "family_confusion.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "### Origin (real vs synthetic), per family" in report and "| Mean |" in report
    summary = result.summary()
    assert "identification:" in summary and len(summary.splitlines()) < 30


def test_family_files_must_name_packed_images(heads, shards, tmp_path):
    bad = tmp_path / "test_annotations_gan.txt"
    bad.write_text("./elsewhere/a.png,1,0,0,0\n")
    config = EvalConfig(checkpoint=str(heads), data=str(shards), out=str(tmp_path / "eval"), size=32,
                        family_files=(("gan", str(bad)),), jpeg_qualities=(), resize_divisors=(), runtime=RUNTIME)
    with pytest.raises(ValueError, match=r"test_annotations_gan.txt:1: elsewhere/a.png is not in the evaluated"):
        evaluate(config)
    with pytest.raises(ValueError, match="unknown family 'vqgan'"):
        replace(config, family_files=(("vqgan", str(bad)),))


def test_official_family_files_select_their_rows_from_the_whole_test_split(official_annotations):
    lines = (official_annotations / "test_annotations.txt").read_text().splitlines()
    paths = [line.split(",")[0][2:] for line in lines]
    files = [(name, str(official_annotations / f"test_annotations_{name}.txt")) for name in reports.FAMILY_FILE_NAMES]
    groups = reports.groups_from_files(paths, files)
    assert [g.name for g in groups] == ["GAN", "Stable Diffusion", "Midjourney", "DALL-E 3"]
    for group, (_, file) in zip(groups, files):
        lines = Path(file).read_text().splitlines()
        assert len(group.rows) == len({line.split(",")[0] for line in lines})  # repeated paths count once
        assert {paths[i] for i in group.rows} == {line.split(",")[0][2:] for line in lines}


# --- Platt scaling, tables, sweeps --------------------------------------------------------------------

def test_platt_scaling_equals_scikit_learns_answer_on_known_logits():
    rng = np.random.default_rng(0)
    origin = np.repeat([0, 1], 40)
    logits = np.concatenate([rng.normal(-0.5, 1.0, 40), rng.normal(1.5, 1.2, 40)])  # overlapping classes
    platt = fit_platt(logits, origin)
    reference = LogisticRegression(max_iter=1000, C=1e10, solver="saga").fit(logits[:, None], origin)
    test = np.linspace(-4, 4, 81)
    expected = expit(reference.decision_function(test[:, None]))
    np.testing.assert_allclose(platt.probability(test), expected, atol=1e-3)
    np.testing.assert_array_equal(platt.predict(test), (expected >= 0.5).astype(np.int64))
    exact = LogisticRegression(max_iter=1000, C=1e10).fit(logits[:, None], origin)
    np.testing.assert_allclose(platt.probability(test), exact.predict_proba(test[:, None])[:, 1], rtol=1e-12)
    with pytest.raises(ValueError, match="needs real and synthetic"):
        fit_platt(logits[:40], origin[:40])


def _predictions(labels, logits, probabilities=None) -> reports.Predictions:
    labels = np.asarray(labels)
    if probabilities is None:
        probabilities = np.full((len(labels), 4), 0.25)
    return reports.Predictions(tuple(str(i) for i in range(len(labels))), labels, np.asarray(logits, float),
                               np.asarray(probabilities, float))


def test_origin_and_identification_tables_on_known_predictions():
    labels = [[0, 0, 4, 8], [0, 2, 4, 8], [1, 0, 0, 0], [1, 2, 1, 3], [1, 2, 1, 3]]
    probabilities = [[1, 0, 0, 0], [1, 0, 0, 0], [0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.5, 0.4, 0.05, 0.05]]
    predictions = _predictions(labels, [-2.0, 0.4, 2.0, 0.8, -1.0], probabilities)
    groups = [reports.Group("GAN", np.array([0, 2])), reports.Group("Stable Diffusion", np.array([1, 3, 4]))]
    table = reports.origin_table(predictions, groups, None)
    assert [r["name"] for r in table] == ["GAN", "Stable Diffusion", "Mean"]
    assert (table[0]["balanced_accuracy"], table[0]["auc"]) == (1.0, 1.0)
    sd = table[1]
    assert sd["balanced_accuracy"] == balanced_accuracy_score([0, 1, 1], [1, 1, 0])
    assert sd["auc"] == roc_auc_score([0, 1, 1], [0.4, 0.8, -1.0])
    assert table[2]["auc"] == pytest.approx((1.0 + sd["auc"]) / 2) and table[2]["count"] == 5
    assert math.isnan(table[2]["balanced_accuracy_platt"])
    identification = reports.identification_table(predictions, groups)
    assert [r["balanced_accuracy"] for r in identification] == [1.0, 0.5, 0.75]
    assert math.isnan(identification[-1]["auc"])  # two of the four families are absent


def test_balanced_groups_pair_each_generator_with_as_many_random_reals():
    labels = np.array([[0, 0, 4, 8]] * 6 + [[1, 0, 0, 0]] * 2 + [[1, 1, 1, 3]] * 3)
    groups = reports.balanced_groups(labels, reports.GENERATOR, np.random.default_rng(0))
    assert [g.name for g in groups] == ["ProGAN", "SD v2.1"]
    for group, synthetic in zip(groups, (2, 3)):
        rows = labels[group.rows]
        assert (rows[:, 0] == 0).sum() == (rows[:, 0] == 1).sum() == synthetic
        assert len(set(group.rows.tolist())) == len(group.rows)


def test_sweep_crops_are_reflect_padded_and_centred():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    crop = centre_crop(image, 3)
    np.testing.assert_array_equal(crop, image[1:4, 2:5])
    padded = centre_crop(image, 9)  # 2 rows above and below, 1 column left and right, mirrored
    np.testing.assert_array_equal(padded[2:7, 1:8], image)
    np.testing.assert_array_equal(padded[0], padded[4])  # reflect: the edge row is not repeated
    np.testing.assert_array_equal(padded[:, 0], padded[:, 2])
    big = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert Condition("resize", 2).apply(big, 32).shape == (32, 32, 3)  # a 192 crop, resized to 32
    assert Condition("resize", 2).x == 6.0 and Condition("jpeg", 55).x == 55.0
    assert lanczos(big[:32, :32], 32) is not None
    flat = np.full((40, 40, 3), 90, dtype=np.uint8)
    assert np.abs(Condition("jpeg", 40).apply(flat, 32).astype(int) - 90).max() <= 2


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


def test_multiclass_auc_is_sklearns_one_vs_rest_macro_auc():
    rng = np.random.default_rng(1)
    truth = np.arange(40) % 4
    probability = rng.dirichlet(np.ones(4), 40) + np.eye(4)[truth] * rng.random((40, 1))
    expected = roc_auc_score(truth, probability / probability.sum(1, keepdims=True), multi_class="ovr")
    assert multiclass_auc(truth, probability / probability.sum(1, keepdims=True)) == pytest.approx(expected)
    assert math.isnan(multiclass_auc(truth[truth < 3], probability[truth < 3]))


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


def test_cli_evaluate_parses_sweeps_and_family_files(heads, shards, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["evaluate", str(heads), str(shards), "--out", str(out), "--size", "32",
                                       "--jpeg-qualities", "50:60:5", "--resize-divisors", "none", *CLI_RUNTIME])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "evaluation.json").read_text())
    assert [(s["sweep"], s["value"]) for s in document["sweeps"]] == [("jpeg", 50), ("jpeg", 55), ("jpeg", 60)]
    assert document["config"]["runtime"] == {"backend": "cpu", "workers": 0, "amp": "auto", "channels_last": True,
                                             "threads": 1, "progress": False}
    bad = CliRunner().invoke(main, ["evaluate", str(heads), str(shards), "--out", str(out),
                                    "--jpeg-qualities", "a:b"])
    assert bad.exit_code != 0 and "expected 'a,b,c'" in bad.output
    bad = CliRunner().invoke(main, ["evaluate", str(heads), str(shards), "--out", str(out), "--family-file", "gan"])
    assert bad.exit_code != 0 and "expected NAME=FILE" in bad.output


def test_detector_is_plain_module_state(heads):
    """The heads checkpoint loads with weights_only=True (no pickled objects)."""
    state = torch.load(heads, weights_only=True)
    assert isinstance(state["config"], dict)
    json.dumps(state["config"])
