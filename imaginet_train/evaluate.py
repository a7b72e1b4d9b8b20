"""`evaluate`: a detector (`heads.pt` from `linear`) on a test shard set, in the ImagiNet paper's tables.

1. Optionally, Platt scaling (`calibrate.py`) fitted on the origin logits of a calibration shard set.
2. One pass over the test shards through the loader (`eval` preset: pad and centre crop; or `social`)
   gives every image's origin logit and family probabilities, with its key.
3. The tables of `reports.py`: origin per family group with a Mean row (the family groups come from
   the authors' per-family annotation files, matched to the images by source path, or are built
   the same way), per generator, per content type, model identification.
4. The robustness sweeps of `sweeps.py` (JPEG quality, resize scale) on the decoded source images,
   each point averaged over the family groups, for both tracks.

Written to OUT: `evaluation.json` (last, atomically), `report.md`, `origin.csv`, `generators.csv`,
`content.csv`, `identification.csv`, `sweeps.csv`, `sweep_jpeg.png`, `sweep_resize.png`,
`family_confusion.png`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.format.annotations import VOCABULARIES, recorded_format
from imaginet_shards.io.shardset import load_manifest, shard_set_root
from imaginet_shards.loaders import make_loader
from imaginet_shards.ops.stats import shard_metadata

from . import dist, plots, reports
from .calibrate import PlattScaler, fit_platt
from .engine import Runtime, RuntimeOptions
from .linear import Detector, load_detector
from .metrics import confusion_matrix
from .objectives import FAMILY_CLASSES
from .reports import FAMILY, GENERATOR, ORIGIN, Group, Predictions
from .sweeps import JPEG_QUALITIES, RESIZE_DIVISORS, Condition, conditions, sweep_predictions

RESULT_NAME = "evaluation.json"
SWEEP_KEYS = ("origin_balanced_accuracy", "origin_auc", "family_accuracy")
TABLES = ("origin", "generators", "content", "identification")


@dataclass(frozen=True)
class EvalConfig:
    """Which detector, on which shards, calibrated on what, grouped how, with which sweeps, written where."""

    checkpoint: str
    data: str
    out: str
    preset: Literal["eval", "social"] = "eval"
    size: int = 256
    batch_size: int = 64
    platt: str | None = None  # calibration shard set for Platt scaling
    family_files: tuple[tuple[str, str], ...] = ()  # (gan|sd|midjourney|dalle3, annotation file)
    seed: int = 0  # the random real images paired with each family / generator
    jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES
    resize_divisors: tuple[int, ...] = RESIZE_DIVISORS
    runtime: RuntimeOptions = RuntimeOptions()

    def __post_init__(self) -> None:
        if self.preset not in ("eval", "social"):
            raise ValueError(f"preset must be 'eval' or 'social', got {self.preset!r}")
        if self.size < 1 or self.batch_size < 1:
            raise ValueError(f"size and batch_size must be >= 1, got {self.size} and {self.batch_size}")
        bad = [q for q in self.jpeg_qualities if not 1 <= q <= 100]
        if bad:
            raise ValueError(f"JPEG qualities must be in 1..100, got {bad}")
        bad = [i for i in self.resize_divisors if not 1 <= i <= 48]
        if bad:
            raise ValueError(f"resize divisors must be in 1..48 (scale 12/i), got {bad}")
        names = [name for name, _ in self.family_files]
        for name in names:
            reports.family_label(name)
        if len(set(names)) != len(names):
            raise ValueError(f"each family may have one annotation file, got {names}")


class _KeyedBatch(Protocol):
    images: Tensor
    labels: Tensor
    keys: list[str]


class _KeyedLoader(Protocol):
    def batches(self) -> Iterator[_KeyedBatch]: ...


@torch.no_grad()
def predict(detector: Detector, loader: _KeyedLoader, runtime: Runtime, progress: bool = False) -> Predictions:
    """Every image's origin logit and family probabilities (the detector in eval mode)."""
    detector.eval()
    keys: list[str] = []
    labels, logits, probabilities = [], [], []
    for batch in tqdm(loader.batches(), desc="evaluate", unit="batch", disable=not progress, leave=False):
        with runtime.autocast():
            origin, family = detector(runtime.prepare_images(batch.images))
        keys += batch.keys
        labels.append(batch.labels.cpu().numpy())
        logits.append(origin.float().cpu().numpy())
        probabilities.append(torch.softmax(family.float(), dim=1).cpu().numpy())
    if not keys:
        raise ValueError("the test loader yielded no batch")
    return Predictions(tuple(keys), np.concatenate(labels), np.concatenate(logits), np.concatenate(probabilities))


def source_paths(data: str, keys: Sequence[str]) -> list[str]:
    """The annotation path each key was packed from (each sample's `.json` member)."""
    root = shard_set_root(data)
    path_of = {r["key"]: r["path"] for entry in load_manifest(data).shards for r in shard_metadata(root, entry)}
    return [path_of[key] for key in keys]


def family_groups(config: EvalConfig, predictions: Predictions) -> list[Group]:
    """From the per-family annotation files when given, else built as they are."""
    if config.family_files:
        return reports.groups_from_files(source_paths(config.data, predictions.keys), config.family_files)
    return reports.default_family_groups(predictions.labels, config.seed)


@dataclass(frozen=True)
class EvalResult:
    """Whole-set metrics, the paper's tables, sweep rows, family confusion matrix, Platt scaler, output folder."""

    metrics: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    sweeps: list[dict[str, Any]]
    confusion: list[list[int]]
    platt: PlattScaler | None
    out: Path

    def summary(self) -> str:
        """A one-screen text summary."""
        m = self.metrics
        lines = [f"evaluated {m['count']} images ({m['real']} real, {m['synthetic']} synthetic) -> {self.out}",
                 f"  {'origin':<18} {'n':>6} {'bal.acc':>8} {'Platt':>8} {'AUC':>8} {'AP':>8}"]
        lines += [f"  {r['name'][:18]:<18} {r['count']:>6} {_fmt(r['balanced_accuracy']):>8} "
                  f"{_fmt(r['balanced_accuracy_platt']):>8} {_fmt(r['auc']):>8} {_fmt(r['average_precision']):>8}"
                  for r in self.tables["origin"]]
        lines.append("  identification: " + ", ".join(f"{r['name']} {_fmt(r['balanced_accuracy'])}"
                                                      for r in self.tables["identification"])
                     + f"; macro AUC {_fmt(self.tables['identification'][-1].get('auc'))}")
        for sweep in ("jpeg", "resize"):
            rows = [r for r in self.sweeps if r["sweep"] == sweep]
            if rows:
                lines.append(f"  {sweep} origin AUC: " + " ".join(f"{r['x']:.3g}:{_fmt(r['origin_auc'])}"
                                                                  for r in rows))
        return "\n".join(lines)


def evaluate(config: EvalConfig) -> EvalResult:
    """Score the detector on the shards as configured and write the result files into `config.out`."""
    options = config.runtime
    options.apply_threads()
    runtime = options.runtime(dist.device_for(dist.DistEnv()))
    detector, heads_config = load_detector(config.checkpoint, runtime.device)
    detector = runtime.prepare_model(detector)
    preset = get_preset(config.preset, size=config.size)
    platt = None
    if config.platt is not None:
        calibration = predict(detector, _loader(config.platt, config, preset, runtime), runtime, options.progress)
        platt = fit_platt(calibration.origin_logit, calibration.labels[:, ORIGIN])
    clean = predict(detector, _loader(config.data, config, preset, runtime), runtime, options.progress)
    groups = family_groups(config, clean)
    annotation_format = recorded_format(load_manifest(config.data).annotations)
    generators = reports.balanced_groups(clean.labels, GENERATOR, np.random.default_rng([config.seed, 1]),
                                         annotation_format)
    tables = {"origin": reports.origin_table(clean, groups, platt),
              "generators": reports.origin_table(clean, generators, platt),
              "content": reports.origin_table(clean, reports.content_groups(clean.labels), platt),
              "identification": reports.identification_table(clean, groups)}
    sweep = conditions(config.jpeg_qualities, config.resize_divisors)
    swept = sweep_predictions(detector, config.data, sweep, runtime=runtime, size=config.size, mean=preset.mean,
                              std=preset.std, batch_size=config.batch_size, workers=options.workers,
                              progress=options.progress)
    synthetic = reports.known_synthetic(clean.labels, FAMILY)
    everything = reports.origin_row(clean, "all", platt)
    family_all = reports.identification_table(clean, [Group("all", np.arange(len(clean)))])[-1]
    metrics = {"count": everything["count"], "real": everything["real"], "synthetic": everything["synthetic"],
               **{f"origin_{k}": everything[k] for k in reports.METRICS},
               "family_balanced_accuracy": family_all["balanced_accuracy"], "family_auc": family_all["auc"],
               "clean_sweep": reports.sweep_metrics(clean, groups, platt)}
    result = EvalResult(
        metrics=metrics, tables=tables,
        sweeps=[_sweep_row(c, swept[c].aligned_to(clean.keys), groups, platt) for c in sweep],
        confusion=confusion_matrix(clean.labels[synthetic, FAMILY],
                                   clean.family_probability[synthetic].argmax(axis=1), FAMILY_CLASSES).tolist(),
        platt=platt, out=Path(config.out))
    write_outputs(result, config, heads_config)
    return result


def _loader(data: str, config: EvalConfig, preset: Preset, runtime: Runtime) -> _KeyedLoader:
    loader = make_loader(data, backend=config.runtime.backend, preset=preset, batch_size=config.batch_size,
                         rank=0, world_size=1, device=str(runtime.device), workers=config.runtime.workers,
                         shuffle=False, drop_last=False)
    return cast(_KeyedLoader, loader)  # both backends also yield each batch's keys


def _sweep_row(condition: Condition, predictions: Predictions, groups: Sequence[Group],
               platt: PlattScaler | None) -> dict[str, Any]:
    return {"sweep": condition.sweep, "value": condition.value, "x": condition.x,
            **reports.sweep_metrics(predictions, groups, platt)}


def write_outputs(result: EvalResult, config: EvalConfig, heads_config: dict[str, Any]) -> None:
    """The CSV tables, the plots, report.md, and evaluation.json last (atomically)."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        _write_csv(out / f"{name}.csv", result.tables[name])
    _write_csv(out / "sweeps.csv", result.sweeps)
    for sweep, label in (("jpeg", "JPEG quality"), ("resize", "scale (12 / i)")):
        rows = [{**r, "value": r["x"]} for r in result.sweeps if r["sweep"] == sweep]
        if rows:
            plots.sweep_plot(rows, SWEEP_KEYS, label, out / f"sweep_{sweep}.png",
                             clean=result.metrics["clean_sweep"])
    classes = VOCABULARIES["family"][:FAMILY_CLASSES]
    plots.confusion_plot(result.confusion, classes, out / "family_confusion.png")
    document = {**result.metrics, "tables": result.tables, "sweeps": result.sweeps,
                "family_confusion_matrix": result.confusion, "family_classes": list(classes),
                "platt": None if result.platt is None else asdict(result.platt),
                "config": asdict(config), "detector": heads_config}
    (out / "report.md").write_text("\n".join(reports.markdown_report(document)) + "\n")
    tmp = out / f".{RESULT_NAME}.tmp"
    tmp.write_text(json.dumps(_json_safe(document), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / RESULT_NAME)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(value: Any) -> Any:
    """NaN (undefined metrics) becomes null, tuples lists: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
