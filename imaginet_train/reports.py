"""The ImagiNet paper's tables, from per-image predictions.

- **origin**: one row per generator family, each over that family's synthetic images *and its own
  real images* (the authors' four per-family test files), then a **Mean** row: balanced accuracy
  (raw threshold 0.5, and Platt-calibrated when a scaler is given), ROC AUC, average precision.
- **generators**: one row per generator: its synthetic images with an equal-size seeded random
  subsample of all real images; Mean row.
- **content**: one row per content type, over all its images; Mean row.
- **identification**: family balanced accuracy over each family group's synthetic images, and the
  one-vs-rest macro ROC AUC of the family probabilities over all of them (on the Mean row).

Family groups come from the authors' per-family annotation files (rows selected by path, see
`groups_from_files`) or, without them, are built as those files are: each family's synthetic
images with an equal-size seeded random subsample of the real images (`default_family_groups`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaginet_shards.format.annotations import UNKNOWN, VOCABULARIES, label_name, read_annotations

from .calibrate import PlattScaler
from .metrics import average_precision, balanced_accuracy, multiclass_auc, roc_auc
from .objectives import FAMILY_CLASSES

ORIGIN, CONTENT, FAMILY, GENERATOR = range(4)
# The authors' per-family test files, in their order: test_annotations_{name}.txt.
FAMILY_FILE_NAMES = ("gan", "sd", "midjourney", "dalle3")
METRICS = ("balanced_accuracy", "balanced_accuracy_platt", "auc", "average_precision")


@dataclass(frozen=True)
class Predictions:
    """Per image: key, labels [N, 4], origin logit [N], family probabilities [N, 4]."""

    keys: tuple[str, ...]
    labels: np.ndarray
    origin_logit: np.ndarray
    family_probability: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> Predictions:
        """The predictions of `rows` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        indices = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return Predictions(tuple(self.keys[i] for i in indices), self.labels[indices],
                           self.origin_logit[indices], self.family_probability[indices])

    def aligned_to(self, keys: Sequence[str]) -> Predictions:
        """These predictions in the order of `keys` (every key must be present)."""
        position = {key: i for i, key in enumerate(self.keys)}
        missing = [k for k in keys if k not in position]
        if missing:
            raise ValueError(f"{len(missing)} image(s) have no prediction, e.g. key {missing[0]!r}")
        return self.take(np.array([position[k] for k in keys], dtype=np.int64))


@dataclass(frozen=True)
class Group:
    """A named set of rows of a `Predictions`."""

    name: str
    rows: np.ndarray


def groups_from_files(paths: Sequence[str], files: Sequence[tuple[str, str]]) -> list[Group]:
    """One group per (family name, annotation file): the rows whose source path the file lists.

    A path the file lists that is not among `paths` is an error naming the file and line (the
    shard set was packed from other annotations). A path listed twice counts once.
    """
    row_of = {path: i for i, path in enumerate(paths)}
    groups = []
    for name, file in files:
        frame = read_annotations(file)
        missing = [(line, path) for line, path in zip(frame["line"], frame["path"]) if path not in row_of]
        if missing:
            line, path = missing[0]
            raise ValueError(f"{file}:{line}: {path} is not in the evaluated shard set "
                             f"({len(missing)} of its {len(frame)} paths are missing)")
        groups.append(Group(family_label(name), np.array([row_of[p] for p in frame["path"]], dtype=np.int64)))
    return groups


def family_label(name: str) -> str:
    """The display name of a per-family file name (gan, sd, midjourney, dalle3)."""
    if name not in FAMILY_FILE_NAMES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILY_FILE_NAMES)}")
    return VOCABULARIES["family"][FAMILY_FILE_NAMES.index(name)]


def known_synthetic(labels: np.ndarray, column: int) -> np.ndarray:
    """Mask of the synthetic rows whose label in `column` is known (zero-shot test sets give only
    the origin, and maybe a generator; the rest is UNKNOWN)."""
    return (labels[:, ORIGIN] == 1) & (labels[:, column] != UNKNOWN)


def balanced_groups(labels: np.ndarray, column: int, rng: np.random.Generator,
                    annotation_format: str = "imaginet") -> list[Group]:
    """Per known value of label `column` among the synthetic rows: those rows plus as many real
    rows (or all of them, if fewer), drawn at random without replacement; named as
    `annotation_format` numbers them (a zero-shot set's own generator ids)."""
    real = np.flatnonzero(labels[:, ORIGIN] == 0)
    known = known_synthetic(labels, column)
    groups = []
    for value in sorted(set(labels[known, column].tolist())):
        synthetic = np.flatnonzero(known & (labels[:, column] == value))
        reals = rng.permutation(real)[:len(synthetic)]
        name = label_name("family" if column == FAMILY else "generator", value, annotation_format)
        groups.append(Group(name, np.concatenate([reals, synthetic])))
    return groups


def default_family_groups(labels: np.ndarray, seed: int) -> list[Group]:
    """Family groups without the authors' files: each family with an equal number of real images;
    one group of every image when no family is known (a zero-shot test set)."""
    groups = balanced_groups(labels, FAMILY, np.random.default_rng(seed))
    return groups or [Group("all", np.arange(len(labels)))]


def origin_row(predictions: Predictions, name: str, platt: PlattScaler | None) -> dict[str, Any]:
    """Counts and origin metrics of one group."""
    origin = predictions.labels[:, ORIGIN]
    logit = predictions.origin_logit
    calibrated = (balanced_accuracy(origin, platt.predict(logit), 2) if platt is not None and len(origin)
                  else math.nan)
    return {"name": name, "count": len(origin), "real": int((origin == 0).sum()),
            "synthetic": int((origin == 1).sum()),
            "balanced_accuracy": balanced_accuracy(origin, (logit >= 0).astype(np.int64), 2),
            "balanced_accuracy_platt": calibrated, "auc": roc_auc(origin, logit),
            "average_precision": average_precision(origin, logit)}


def with_mean(rows: list[dict[str, Any]], keys: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """`rows` and a Mean row: each metric averaged over the rows, counts summed."""
    if not rows:
        return []
    mean: dict[str, Any] = {"name": "Mean"}
    for key in rows[0]:
        if key in keys:
            mean[key] = float(np.mean([r[key] for r in rows]))
        elif key != "name":
            mean[key] = sum(r[key] for r in rows)
    return [*rows, mean]


def origin_table(predictions: Predictions, groups: Sequence[Group], platt: PlattScaler | None
                 ) -> list[dict[str, Any]]:
    """One origin row per group, and the Mean row."""
    return with_mean([origin_row(predictions.take(g.rows), g.name, platt) for g in groups])


def content_groups(labels: np.ndarray) -> list[Group]:
    """Per content type present: all its images."""
    return [Group(VOCABULARIES["content"][c], np.flatnonzero(labels[:, CONTENT] == c))
            for c in sorted(set(labels[:, CONTENT].tolist()) - {UNKNOWN})]


def identification_table(predictions: Predictions, groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Family balanced accuracy over each group's synthetic images of known family; the Mean row
    adds the macro AUC (one-vs-rest) over those images of all groups."""
    rows, synthetic_rows = [], []
    for group in groups:
        part = predictions.take(group.rows)
        synthetic = known_synthetic(part.labels, FAMILY)
        synthetic_rows.append(group.rows[synthetic])
        family, predicted = part.labels[synthetic, FAMILY], part.family_probability[synthetic].argmax(axis=1)
        rows.append({"name": group.name, "count": int(synthetic.sum()),
                     "balanced_accuracy": balanced_accuracy(family, predicted, FAMILY_CLASSES)})
    table = with_mean(rows, ("balanced_accuracy",))
    if table:
        everything = predictions.take(np.concatenate(synthetic_rows))
        table[-1]["auc"] = multiclass_auc(everything.labels[:, FAMILY], everything.family_probability)
    return table


def sweep_metrics(predictions: Predictions, groups: Sequence[Group], platt: PlattScaler | None
                  ) -> dict[str, float]:
    """The sweep curves' values, each the mean over the family groups (as the authors average over
    their per-family files): origin balanced accuracy (calibrated when `platt`), origin AUC, family
    accuracy."""
    origin = origin_table(predictions, groups, platt)[-1]
    family = identification_table(predictions, groups)[-1]
    key = "balanced_accuracy_platt" if platt is not None else "balanced_accuracy"
    return {"origin_balanced_accuracy": origin[key], "origin_auc": origin["auc"],
            "family_accuracy": family["balanced_accuracy"]}


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """`rows` as a Markdown table of `columns` (floats with 4 decimals, NaN/None as n/a, a column a
    row lacks left empty)."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    return [f"| {' | '.join(c.replace('_', ' ') for c in columns)} |", f"|{' --- |' * len(columns)}",
            *(f"| {' | '.join(cell(r[c]) if c in r else '' for c in columns)} |" for r in rows)]


def markdown_report(document: Mapping[str, Any]) -> list[str]:
    """The tables of an evaluation document (as `evaluate` writes it) as Markdown lines."""
    platt = document.get("platt")
    calibration = (f"Platt scaling fitted on {platt['count']} calibration images "
                   f"(probability = expit({platt['coef']:.4g} * logit + {platt['intercept']:.4g}))."
                   if platt else "No Platt scaling (no calibration set given): calibrated columns are n/a.")
    origin_columns = ["name", "count", "real", "synthetic", *METRICS]
    tables = document["tables"]
    lines = [f"{document['count']} test images ({document['real']} real, {document['synthetic']} synthetic). "
             + calibration, "",
             "### Origin (real vs synthetic), per family with its own real images", "",
             *markdown_table(tables["origin"], origin_columns), "",
             "### Per generator (with an equal number of random real images)", "",
             *markdown_table(tables["generators"], origin_columns), "",
             "### Per content type", "", *markdown_table(tables["content"], origin_columns), "",
             "### Model identification (family of the synthetic images; AUC: one-vs-rest macro)", "",
             *markdown_table(tables["identification"], ["name", "count", "balanced_accuracy", "auc"])]
    for sweep, title in (("jpeg", "JPEG quality (after the centre crop)"),
                         ("resize", "resize (centre crop of side size * 12 / i, Lanczos back to size; x = 12 / i)")):
        rows = [{**r, "x": f"{r['x']:.3g}"} for r in document["sweeps"] if r["sweep"] == sweep]
        if rows:
            lines += ["", f"### Robustness: {title}, means over the family groups", "",
                      *markdown_table(rows, ["x", "origin_balanced_accuracy", "origin_auc", "family_accuracy"])]
    return lines
