"""inspect: what a shard set holds, and which trivial features give the label away.

Reads only each sample's `.json` member, found through the `.idx` files (no image bytes are read).
The bias table shows, for origin, the share of synthetic images per format, size bin and file-size bin,
and the ROC AUC a detector would reach from that feature alone: in ImagiNet every WebP image is
synthetic, so a model can learn the format instead of the generator.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imaginet_shards.errors import SampleError
from imaginet_shards.format.annotations import LABEL_COLUMNS, label_name, recorded_format
from imaginet_shards.format.manifest import Manifest, ShardEntry
from imaginet_shards.format.tar import parse_index, split_member_name
from imaginet_shards.format.tiles import RETILE_KEY
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import load_manifest, shard_set_root

BIAS_AUC_MARGIN = 0.1  # |AUC - 0.5| above this is flagged


def shard_metadata(root: str, entry: ShardEntry) -> list[dict]:
    """The `.json` member of every sample of one shard, read by seeking through its index."""
    index = parse_index(storage.read_bytes(storage.join(root, entry.index)).decode(), entry.index)
    records = []
    with storage.open_read(storage.join(root, entry.name)) as stream:
        for members in index:
            meta = next((m for m in members if m.ext == "json"), None)
            if meta is None:
                raise SampleError(entry.name, split_member_name(members[0].name)[0],
                                  "no .json member")
            stream.seek(meta.offset)
            record = json.loads(stream.read(meta.size))
            record["shard"] = entry.name
            records.append(record)
    return records


def load_metadata(dest: str, workers: int = 4) -> tuple[Manifest, pd.DataFrame]:
    """Manifest and one row per sample: labels, format, width, height, bytes, shard."""
    manifest = load_manifest(dest)
    root = shard_set_root(dest)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shards = list(pool.map(lambda e: shard_metadata(root, e), manifest.shards))
    # a tiled set's .tiles members keep their source's format for the statistics and bias table
    rows = [{**{c: r["labels"][c] for c in LABEL_COLUMNS},
             "format": r.get("source", {}).get("format", r["format"]),
             "width": r["width"], "height": r["height"], "bytes": r["bytes"], "shard": r["shard"]}
            for records in shards for r in records]
    return manifest, pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "format", "width", "height",
                                                 "bytes", "shard"])


def _auc(feature: np.ndarray, origin: np.ndarray) -> float | None:
    """ROC AUC of `feature` for the larger origin label (synthetic), as scikit-learn's
    `roc_auc_score` gives it: the Mann-Whitney U statistic with average ranks for ties (computed
    here so that `inspect` does not import scikit-learn and SciPy, half a second)."""
    labels = np.unique(origin)
    if len(labels) < 2:
        return None
    positive = origin == labels[-1]
    values, inverse, counts = np.unique(feature, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse.reshape(-1)]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _bias_rows(frame: pd.DataFrame, column: str, bins: pd.Series) -> dict:
    table = pd.crosstab(bins, frame["origin"], dropna=True).reindex(columns=[0, 1], fill_value=0)
    table = table[table.sum(axis=1) > 0]
    table.columns = ["real", "synthetic"]
    table["synthetic_share"] = (table["synthetic"] / table.sum(axis=1)).round(3)
    # AUC of the best single-feature detector: rank each bin by its synthetic share
    score = bins.map(table["synthetic_share"]).astype(float).to_numpy()
    auc = _auc(score, frame["origin"].to_numpy())
    return {"feature": column, "auc": auc,
            "flag": auc is not None and abs(auc - 0.5) > BIAS_AUC_MARGIN,
            "table": {str(k): {c: (float(v) if c == "synthetic_share" else int(v))
                               for c, v in row.items()} for k, row in table.iterrows()}}


def bias_report(frame: pd.DataFrame) -> list[dict]:
    """For format, image size and file size: synthetic share per bin and single-feature AUC."""
    if frame.empty:
        return []
    side = frame[["width", "height"]].max(axis=1)
    size_bins = pd.cut(side, [0, 256, 512, 768, 1024, 1536, np.inf],
                       labels=["<=256", "257-512", "513-768", "769-1024", "1025-1536", ">1536"])
    quantiles = min(5, frame["bytes"].nunique())
    byte_bins = pd.qcut(frame["bytes"], quantiles, duplicates="drop")
    return [_bias_rows(frame, "format", frame["format"]),
            _bias_rows(frame, "max side (px)", size_bins),
            _bias_rows(frame, "file size (quintiles)", byte_bins)]


@dataclass(frozen=True)
class InspectReport:
    manifest: Manifest
    counts: dict[str, dict[str, int]]
    formats: dict[str, int]
    image_sizes: dict[str, dict[str, float]]
    shard_spread: dict[str, dict[str, float]]
    bias: list[dict]

    def to_dict(self) -> dict:
        return {"samples": self.manifest.samples, "shards": len(self.manifest.shards),
                "skipped": len(self.manifest.skipped), "counts": self.counts,
                "formats": self.formats, "image_sizes": self.image_sizes,
                "shard_spread": self.shard_spread, "bias": self.bias}


def _describe(values: pd.Series) -> dict[str, float]:
    if values.empty:
        return {}
    q = values.quantile([0.0, 0.1, 0.5, 0.9, 1.0]).to_numpy()
    return dict(zip(["min", "p10", "median", "p90", "max"], (float(v) for v in q)))


def inspect(dest: str) -> InspectReport:
    manifest, frame = load_metadata(dest)
    annotation_format = recorded_format(manifest.annotations)
    counts = {c: {label_name(c, int(v), annotation_format): int(n) for v, n in
                  frame[c].value_counts().sort_index().items()} for c in LABEL_COLUMNS}
    shards = pd.DataFrame([{"samples": s.samples, "bytes": s.bytes} for s in manifest.shards])
    return InspectReport(
        manifest=manifest, counts=counts,
        formats={str(k): int(v) for k, v in frame["format"].value_counts().items()},
        image_sizes={"width": _describe(frame["width"]), "height": _describe(frame["height"]),
                     "megapixels": _describe(frame["width"] * frame["height"] / 1e6)},
        shard_spread={"samples": _describe(shards["samples"]), "bytes": _describe(shards["bytes"])},
        bias=bias_report(frame))


def format_report(report: InspectReport) -> str:
    """A one-screen text summary, bias warnings first."""
    lines = []
    for row in report.bias:
        if row["flag"]:
            lines.append(f"WARNING: {row['feature']} alone predicts real vs synthetic with ROC AUC "
                         f"{row['auc']:.2f}: a detector can learn it instead of the generator traces")
    m = report.manifest
    lines.append(f"{m.samples} samples in {len(m.shards)} shards, {len(m.skipped)} skipped at packing")
    recipe = m.options.get(RETILE_KEY)
    if recipe is not None:
        lines.append(f"   layout: tiled, {len(recipe['pixels_sha256'])} images ({'/'.join(recipe['formats'])}) "
                     f"as {recipe['tile']}-px {recipe['codec']} tiles, the others as packed; made from "
                     f"the shard set with manifest sha256 {recipe['source_manifest_sha256'][:16]}…")
    for column, counts in report.counts.items():
        lines.append(f"{column:>9}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines.append("   format: " + ", ".join(f"{k} {v}" for k, v in report.formats.items()))
    for name, stats in [*report.image_sizes.items(), *((f"shard {k}", v) for k, v in
                                                        report.shard_spread.items())]:
        lines.append(f"{name:>14}: " + "  ".join(f"{k} {v:,.4g}" for k, v in stats.items()))
    lines.append("bias (synthetic share per bin; AUC of that feature alone for origin):")
    for row in report.bias:
        auc = "n/a" if row["auc"] is None else f"{row['auc']:.2f}"
        mark = "  <-- confound" if row["flag"] else ""
        lines.append(f"  {row['feature']}: AUC {auc}{mark}")
        for bin_name, cells in row["table"].items():
            lines.append(f"    {bin_name:>22}  real {cells['real']:>7}  synthetic "
                         f"{cells['synthetic']:>7}  share {cells['synthetic_share']:.2f}")
    return "\n".join(lines)
