"""Zero-shot test sets: annotation files in other formats packed end to end, unknown labels through
verify, the loader, inspect and the evaluation tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from helpers.trees import make_dataset
from imaginet_shards.cli import main
from imaginet_shards.format.annotations import UNKNOWN
from imaginet_shards.io.shardset import load_manifest
from imaginet_shards.loaders import make_loader
from imaginet_shards.ops.stats import inspect
from imaginet_shards.ops.verify import verify
from imaginet_train import reports
from imaginet_train.reports import Predictions


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, list[tuple[str, int]]]:
    """A small tree (real ImageNet-like `.JPEG`s and synthetic PNG/WebP/JPEG) and (path, origin)."""
    root = tmp_path_factory.mktemp("zero") / "root"
    rows = make_dataset(root, 12, seed=4).read_text().splitlines()
    return root, [(line.split(",")[0][2:], int(line.split(",")[1])) for line in rows]


def _pack(root: Path, annotations: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["pack", "--root", str(root), "--annotations", str(annotations),
                                     "--out", str(out), "--max-count", "5", "--workers", "1", *extra])


def _loader_labels(shards: Path) -> dict[str, list[int]]:
    loader = make_loader(shards, backend="cpu", preset="eval", batch_size=4, rank=0, world_size=1,
                         workers=0, shuffle=False, drop_last=False)
    return {key: labels.tolist() for batch in loader.batches()
            for key, labels in zip(batch.keys, batch.labels)}


def test_path_label_file_packs_with_unknown_labels(tree, tmp_path):
    root, rows = tree
    annotations = tmp_path / "Test_DreamBooth.txt"
    annotations.write_text("".join(f"{path} {origin}\n" for path, origin in rows))
    refused = _pack(root, annotations, tmp_path / "refused")
    assert refused.exit_code != 0
    assert f"{annotations}:1: expected 5 comma-separated columns, got 1" in refused.output
    assert "reads as --annotation-format path-label" in refused.output
    assert not (tmp_path / "refused" / "manifest.json").exists()

    result = _pack(root, annotations, tmp_path / "shards", "--annotation-format", "path-label")
    assert result.exit_code == 0, result.output
    assert verify(str(tmp_path / "shards"), decode=True, progress=False).ok
    manifest = load_manifest(str(tmp_path / "shards"))
    assert manifest.annotations["format"] == "path-label" and manifest.samples == len(rows)
    labels = _loader_labels(tmp_path / "shards")
    assert sorted(v[0] for v in labels.values()) == sorted(origin for _, origin in rows)
    assert all(v[1:] == [UNKNOWN] * 3 for v in labels.values())
    counts = inspect(str(tmp_path / "shards")).counts
    assert counts["content"] == {"unknown": len(rows)} and counts["generator"] == {"unknown": len(rows)}
    assert counts["origin"] == {"real": 4, "synthetic": 8}


def test_path_label_generator_file_keeps_the_generator(tree, tmp_path):
    root, rows = tree
    annotations = tmp_path / "annotations_corvi.txt"
    annotations.write_text("".join(f"{path},{origin},{i % 3}\n" for i, (path, origin) in enumerate(rows)))
    check = CliRunner().invoke(main, ["check-annotations", str(annotations)])
    assert check.exit_code == 1 and "reads as --annotation-format path,label,generator" in check.output
    check = CliRunner().invoke(main, ["check-annotations", "--annotation-format", "path,label,generator",
                                      str(annotations)])
    assert check.exit_code == 0 and "12 rows (4 real, 8 synthetic)" in check.output
    result = _pack(root, annotations, tmp_path / "shards", "--annotation-format", "path,label,generator")
    assert result.exit_code == 0, result.output
    by_path = {path: [origin, UNKNOWN, UNKNOWN, i % 3] for i, (path, origin) in enumerate(rows)}
    manifest = load_manifest(str(tmp_path / "shards"))
    assert manifest.annotations["format"] == "path,label,generator"
    assert sorted(_loader_labels(tmp_path / "shards").values()) == sorted(by_path.values())
    counts = inspect(str(tmp_path / "shards")).counts
    assert counts["generator"] == {"generator 0": 4, "generator 1": 4, "generator 2": 4}
    assert counts["family"] == {"unknown": 12}


def test_bad_annotation_format_is_a_usage_error(tree, tmp_path):
    root, _ = tree
    annotations = tmp_path / "a.txt"
    annotations.write_text("x.png,1\n")
    result = _pack(root, annotations, tmp_path / "out", "--annotation-format", "csv")
    assert result.exit_code == 2 and "'csv' is not one of imaginet" in result.output


def test_evaluation_tables_leave_unknown_labels_out():
    """Origin metrics over every row; generators named by the dataset's own ids; no family score,
    no family group and no content group where those are unknown."""
    labels = np.array([[0, -1, -1, 0], [0, -1, -1, 0], [1, -1, -1, 0], [1, -1, -1, 5], [1, -1, -1, 5]])
    logits = np.array([0.1, 0.6, 0.9, 0.7, 0.2])
    family = np.tile([1.0, 0.0, 0.0, 0.0], (5, 1))
    predictions = Predictions(tuple("abcde"), labels, logits, family)
    groups = reports.default_family_groups(labels, seed=0)
    assert [g.name for g in groups] == ["all"]
    (row, mean) = reports.origin_table(predictions, groups, None)
    assert row["auc"] == roc_auc_score([0, 0, 1, 1, 1], logits) and row["count"] == 5
    (ident, ident_mean) = reports.identification_table(predictions, groups)
    assert ident["count"] == 0 and math.isnan(ident["balanced_accuracy"]) and math.isnan(ident_mean["auc"])
    generators = reports.balanced_groups(labels, 3, np.random.default_rng(0), "path,label,generator")
    assert [g.name for g in generators] == ["generator 0", "generator 5"]
    g5 = predictions.take(generators[1].rows)
    assert (int((g5.labels[:, 0] == 0).sum()), int((g5.labels[:, 0] == 1).sum())) == (2, 2)
    assert reports.content_groups(labels) == []
    unknown_generator = np.where(labels == 5, -1, labels)
    assert [g.name for g in reports.balanced_groups(unknown_generator, 3, np.random.default_rng(0),
                                                    "path,label,generator")] == ["generator 0"]
