"""Trivial real-vs-synthetic baselines: the ROC AUC of one file statistic, read from a shard set's metadata.

A detector is only interesting if it beats these; on a data set where one of them is far from 0.5
(e.g. every WebP file synthetic), a detector may be learning the statistic instead of the traces.
No image is decoded: the statistics come from each sample's `.json` member.
"""
from __future__ import annotations

import numpy as np

from imaginet_shards.ops.stats import load_metadata

from .metrics import roc_auc


def trivial_baselines(dest: str) -> dict[str, float]:
    """ROC AUC for `origin` of file size, bytes per pixel and pixel count on the shard set `dest`."""
    _, columns = load_metadata(dest)
    if len(columns["origin"]) == 0:
        raise ValueError(f"{dest}: no samples to compute baselines on")
    pixels = (columns["width"] * columns["height"]).astype(np.float64)
    features = {"file_size": columns["bytes"].astype(np.float64), "pixels": pixels}
    features["bytes_per_pixel"] = features["file_size"] / pixels
    return {name: roc_auc(columns["origin"], values) for name, values in features.items()}
