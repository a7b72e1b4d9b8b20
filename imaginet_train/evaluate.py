"""`evaluate`: a detector (`heads.pt` from `linear`) on a test shard set, with robustness sweeps.

One pass over the loader (`eval` preset: pad and centre-crop; or `social`): every batch is scored as
loaded ("clean") and under each sweep condition, applied to the crops on the fly:

- `jpeg` q: the crop is de-normalised to uint8, JPEG-encoded at quality q and decoded (PIL's codec, the
  one the loaders use for their compression perturbation), then normalised again;
- `resize` s: the crop is resized by the factor s (bilinear, antialiased) and scored at that size
  (the encoders are fully convolutional with global pooling).

Metrics: origin ROC AUC, balanced accuracy and average precision; family balanced accuracy and
confusion matrix (synthetic rows, 4 families); the same per generator (that generator's images
against all real images) and per content type. Written to OUT: `evaluation.json`, `per_group.csv`,
`sweeps.csv`, `sweep_jpeg.png`, `sweep_resize.png`, `family_confusion.png`.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from imaginet_shards.augment.cpu import decode, encode
from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.format.annotations import VOCABULARIES
from imaginet_shards.loaders import Backend, make_loader

from . import dist, plots
from .engine import Amp, Runtime
from .linear import Detector, load_detector
from .metrics import balanced_accuracy, confusion_matrix, origin_metrics
from .objectives import FAMILY_CLASSES

RESULT_NAME = "evaluation.json"
JPEG_QUALITIES: tuple[int, ...] = tuple(range(40, 101, 5))
RESIZE_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
ORIGIN, CONTENT, FAMILY, GENERATOR = range(4)
METRIC_KEYS = ("origin_auc", "origin_balanced_accuracy", "origin_average_precision", "family_balanced_accuracy")


@dataclass(frozen=True)
class EvalConfig:
    """Which detector, on which shards, with which preset and sweeps, written where."""

    checkpoint: str
    data: str
    out: str
    preset: Literal["eval", "social"] = "eval"
    size: int = 256
    batch_size: int = 64
    jpeg_qualities: tuple[int, ...] = JPEG_QUALITIES
    resize_scales: tuple[float, ...] = RESIZE_SCALES
    backend: Backend = "auto"
    workers: int = 4
    amp: Amp = "auto"
    channels_last: bool = True
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in ("eval", "social"):
            raise ValueError(f"preset must be 'eval' or 'social', got {self.preset!r}")
        if self.size < 1 or self.batch_size < 1:
            raise ValueError(f"size and batch_size must be >= 1, got {self.size} and {self.batch_size}")
        bad = [q for q in self.jpeg_qualities if not 1 <= q <= 100]
        if bad:
            raise ValueError(f"JPEG qualities must be in 1..100, got {bad}")
        bad_scales = [s for s in self.resize_scales if not 0 < s <= 8]
        if bad_scales:
            raise ValueError(f"resize scales must be in (0, 8], got {bad_scales}")


@dataclass(frozen=True)
class Condition:
    """A robustness condition: `clean`, `jpeg` at quality `value`, or `resize` by factor `value`."""

    sweep: Literal["clean", "jpeg", "resize"]
    value: float = 0.0

    def apply(self, images: Tensor, preset: Preset) -> Tensor:
        """The condition applied to normalised images [N, 3, H, W]."""
        if self.sweep == "clean":
            return images
        if self.sweep == "resize":
            size = [max(1, round(images.shape[2] * self.value)), max(1, round(images.shape[3] * self.value))]
            return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(preset.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(preset.std, device=images.device).view(1, 3, 1, 1)
        pixels = ((images * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        recoded = torch.stack([decode(encode(image, "jpeg", int(self.value))) for image in pixels])
        return (recoded.to(images.device).float() / 255 - mean) / std

    @property
    def name(self) -> str:
        return "clean" if self.sweep == "clean" else f"{self.sweep}={self.value:g}"


@dataclass(frozen=True)
class Predictions:
    """Per sample: labels [N, 4], probability of `synthetic` [N], predicted family [N]."""

    labels: np.ndarray
    probability: np.ndarray
    family: np.ndarray

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.labels[mask], self.probability[mask], self.family[mask])


def conditions_for(config: EvalConfig) -> tuple[Condition, ...]:
    """Clean, then the JPEG sweep, then the resize sweep."""
    return ((Condition("clean"),) + tuple(Condition("jpeg", q) for q in config.jpeg_qualities)
            + tuple(Condition("resize", s) for s in config.resize_scales))


@torch.no_grad()
def predict(detector: Detector, batches: Iterable[tuple[Tensor, Tensor]], runtime: Runtime, preset: Preset,
            conditions: Sequence[Condition], progress: bool = False) -> dict[Condition, Predictions]:
    """Score every batch under every condition (the detector in eval mode)."""
    detector.eval()
    labels: list[np.ndarray] = []
    outputs: dict[Condition, tuple[list[np.ndarray], list[np.ndarray]]] = {c: ([], []) for c in conditions}
    for images, batch_labels in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        images = images.to(runtime.device)
        labels.append(batch_labels.cpu().numpy())
        for condition in conditions:
            with runtime.autocast():
                origin_logit, family_logits = detector(runtime.prepare_images(condition.apply(images, preset)))
            probability, family = outputs[condition]
            probability.append(torch.sigmoid(origin_logit.float()).cpu().numpy())
            family.append(family_logits.argmax(dim=1).cpu().numpy())
    if not labels:
        raise ValueError("the test loader yielded no batch")
    stacked = np.concatenate(labels)
    return {c: Predictions(stacked, np.concatenate(p), np.concatenate(f)) for c, (p, f) in outputs.items()}


def score(predictions: Predictions) -> dict[str, Any]:
    """Origin AUC / balanced accuracy / AP, family balanced accuracy, and the counts behind them."""
    origin = predictions.labels[:, ORIGIN]
    synthetic = origin == 1
    result: dict[str, Any] = {f"origin_{k}": v for k, v in origin_metrics(origin, predictions.probability).items()}
    result["family_balanced_accuracy"] = balanced_accuracy(
        predictions.labels[synthetic, FAMILY], predictions.family[synthetic], FAMILY_CLASSES)
    result.update(count=int(len(origin)), real=int((~synthetic).sum()), synthetic=int(synthetic.sum()))
    return result


def per_group(predictions: Predictions) -> list[dict[str, Any]]:
    """`score` per generator (its images + all real images) and per content type (its images)."""
    labels = predictions.labels
    real = labels[:, ORIGIN] == 0
    rows = []
    for generator in sorted(set(labels[~real, GENERATOR].tolist())):
        mask = real | (labels[:, GENERATOR] == generator)
        rows.append({"group": "generator", "name": VOCABULARIES["generator"][generator],
                     **score(predictions.subset(mask))})
    for content in sorted(set(labels[:, CONTENT].tolist())):
        rows.append({"group": "content", "name": VOCABULARIES["content"][content],
                     **score(predictions.subset(labels[:, CONTENT] == content))})
    return rows


@dataclass(frozen=True)
class EvalResult:
    """The headline metrics (clean), per-group rows, sweep rows, family confusion matrix, output folder."""

    metrics: dict[str, Any]
    groups: list[dict[str, Any]]
    sweeps: list[dict[str, Any]]
    confusion: list[list[int]]
    out: Path

    def summary(self) -> str:
        """A one-screen text summary."""
        m = self.metrics
        lines = [f"evaluated {m['count']} images ({m['real']} real, {m['synthetic']} synthetic) -> {self.out}",
                 f"  origin: ROC AUC {_fmt(m['origin_auc'])} · balanced accuracy "
                 f"{_fmt(m['origin_balanced_accuracy'])} · AP {_fmt(m['origin_average_precision'])}",
                 f"  family: balanced accuracy {_fmt(m['family_balanced_accuracy'])} (4 classes, synthetic only)",
                 f"  {'group':<28} {'n':>5} {'AUC':>6} {'bal.acc':>8} {'family':>7}"]
        lines += [f"  {g['group'][:3]}:{g['name'][:24]:<24} {g['count']:>5} {_fmt(g['origin_auc']):>6} "
                  f"{_fmt(g['origin_balanced_accuracy']):>8} {_fmt(g['family_balanced_accuracy']):>7}"
                  for g in self.groups]
        for sweep in ("jpeg", "resize"):
            rows = [r for r in self.sweeps if r["sweep"] == sweep]
            if rows:
                lines.append(f"  {sweep} AUC: " + " ".join(f"{r['value']:g}:{_fmt(r['origin_auc'])}" for r in rows))
        return "\n".join(lines)


def evaluate(config: EvalConfig) -> EvalResult:
    """Score the detector on the shards as configured and write the result files into `config.out`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    runtime = Runtime.for_device(dist.device_for(dist.DistEnv()), config.amp, config.channels_last)
    loaded, heads_config = load_detector(config.checkpoint, runtime.device)
    detector = runtime.prepare_model(loaded)
    preset = get_preset(config.preset, size=config.size)
    loader = make_loader(config.data, backend=config.backend, preset=preset, batch_size=config.batch_size,
                         rank=0, world_size=1, device=str(runtime.device), workers=config.workers,
                         shuffle=False, drop_last=False)
    conditions = conditions_for(config)
    predictions = predict(detector, loader, runtime, preset, conditions, progress=config.progress)
    clean = predictions[conditions[0]]
    synthetic = clean.labels[:, ORIGIN] == 1
    result = EvalResult(
        metrics=score(clean), groups=per_group(clean),
        sweeps=[{"sweep": c.sweep, "value": c.value, **score(predictions[c])} for c in conditions[1:]],
        confusion=confusion_matrix(clean.labels[synthetic, FAMILY], clean.family[synthetic],
                                   FAMILY_CLASSES).tolist(),
        out=Path(config.out))
    write_outputs(result, config, heads_config)
    return result


def write_outputs(result: EvalResult, config: EvalConfig, heads_config: dict[str, Any]) -> None:
    """evaluation.json, per_group.csv, sweeps.csv and the PNG plots."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    document = {**result.metrics, "family_confusion_matrix": result.confusion,
                "family_classes": list(VOCABULARIES["family"][:FAMILY_CLASSES]),
                "per_group": result.groups, "sweeps": result.sweeps,
                "config": asdict(config), "detector": heads_config}
    (out / RESULT_NAME).write_text(json.dumps(_json_safe(document), indent=2, sort_keys=True) + "\n")
    _write_csv(out / "per_group.csv", result.groups)
    _write_csv(out / "sweeps.csv", result.sweeps)
    for sweep, label in (("jpeg", "JPEG quality"), ("resize", "resize scale")):
        rows = [r for r in result.sweeps if r["sweep"] == sweep]
        if rows:
            plots.sweep_plot(rows, METRIC_KEYS, label, out / f"sweep_{sweep}.png", clean=result.metrics)
    plots.confusion_plot(result.confusion, VOCABULARIES["family"][:FAMILY_CLASSES], out / "family_confusion.png")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
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


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
