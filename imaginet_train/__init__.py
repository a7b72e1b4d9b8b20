"""imaginet_train: SelfCon and cross-entropy training, classifier heads and evaluation for ImagiNet.

The public API is what `__all__` names, imported on first use (so `imaginet-train --help` does not
import torch): `train` with `TrainConfig` (selfcon / ce under torchrun), `train_heads` with
`LinearConfig` (origin and family heads on a calibration set), `evaluate` with `EvalConfig` (the
paper's tables, sweeps and plots), `RuntimeOptions` (backend, workers, amp, ... shared by the three),
`build_model`, `load_detector` and `fit_platt`. Depends on `imaginet_shards`, never the reverse.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from imaginet_shards import __version__

_EXPORTS = {
    "TrainConfig": "imaginet_train.train", "train": "imaginet_train.train",
    "RECIPES": "imaginet_train.catalog", "ARCHS": "imaginet_train.catalog",
    "LinearConfig": "imaginet_train.linear", "train_heads": "imaginet_train.linear",
    "load_detector": "imaginet_train.linear", "Detector": "imaginet_train.linear",
    "EvalConfig": "imaginet_train.evaluate", "evaluate": "imaginet_train.evaluate",
    "RuntimeOptions": "imaginet_train.engine",
    "build_model": "imaginet_train.model",
    "fit_platt": "imaginet_train.calibrate", "PlattScaler": "imaginet_train.calibrate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imaginet_train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
