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

from imaginet_shards.errors import SampleError
from imaginet_shards.format.annotations import LABEL_COLUMNS, label_name, recorded_format
from imaginet_shards.format.manifest import Manifest, ShardEntry
from imaginet_shards.format.tar import parse_index, split_member_name
from imaginet_shards.format.tiles import RETILE_KEY
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import load_manifest, shard_set_root

BIAS_AUC_MARGIN = 0.1  # |AUC - 0.5| above this is flagged
SIZE_EDGES = (0, 256, 512, 768, 1024, 1536, np.inf)  # max side (px), bins closed on the right
SIZE_NAMES = ("<=256", "257-512", "513-768", "769-1024", "1025-1536", ">1536")
BYTE_BINS = 5  # file-size quantiles
# One array per column, a row per sample (numpy only: pandas would double `inspect`'s start-up).
Columns = dict[str, np.ndarray]


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


def load_metadata(dest: str, workers: int = 4) -> tuple[Manifest, Columns]:
    """Manifest and the columns origin, content, family, generator, format, width, height, bytes
    and shard, one row per sample."""
    manifest = load_manifest(dest)
    root = shard_set_root(dest)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shards = list(pool.map(lambda e: shard_metadata(root, e), manifest.shards))
    records = [r for records in shards for r in records]
    columns = {c: np.array([r["labels"][c] for r in records], dtype=np.int64) for c in LABEL_COLUMNS}
    # a tiled set's .tiles members keep their source's format for the statistics and bias table
    columns["format"] = np.array([r.get("source", {}).get("format", r["format"]) for r in records],
                                 dtype=object)
    for name in ("width", "height", "bytes"):
        columns[name] = np.array([r[name] for r in records], dtype=np.int64)
    columns["shard"] = np.array([r["shard"] for r in records], dtype=object)
    return manifest, columns


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


def _bias_rows(origin: np.ndarray, column: str, bins: np.ndarray, names: list[str]) -> dict:
    """Real and synthetic counts per bin (`bins`: each sample's index into `names`, -1 for none),
    the synthetic share, and the AUC of the best single-feature detector: each sample scored by
    its bin's synthetic share."""
    binned = bins >= 0
    real = np.bincount(bins[binned & (origin == 0)], minlength=len(names))
    synthetic = np.bincount(bins[binned & (origin == 1)], minlength=len(names))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.round(synthetic / (real + synthetic), 3)
    score = np.where(binned, share[np.maximum(bins, 0)], np.nan)
    auc = _auc(score, origin)
    return {"feature": column, "auc": auc,
            "flag": auc is not None and abs(auc - 0.5) > BIAS_AUC_MARGIN,
            "table": {names[i]: {"real": int(real[i]), "synthetic": int(synthetic[i]),
                                 "synthetic_share": float(share[i])}
                      for i in range(len(names)) if real[i] + synthetic[i] > 0}}


def _round_fraction(value: float, precision: int) -> float:
    """`value` to `precision` significant digits after the point (of its fraction when |value| < 1)."""
    if not np.isfinite(value) or value == 0:
        return value
    whole = np.modf(value)[1]
    digits = precision if whole != 0 else -int(np.floor(np.log10(abs(value)))) - 1 + precision
    return float(np.around(value, digits))


def quantile_bins(values: np.ndarray, count: int) -> tuple[np.ndarray, list[str]]:
    """Each value's quantile bin (-1 for none) and the bins' names, as pandas' `qcut(values, count,
    duplicates="drop")` gives them: right-closed intervals `(low, high]` between the quantiles,
    repeated edges dropped, the lowest edge lowered by the rounding step so that it is included."""
    edges = np.quantile(values.astype(np.float64), np.linspace(0, 1, count + 1))
    if len(edges) != 2:
        edges = edges[np.concatenate([[True], edges[1:] != edges[:-1]])]
    ids = np.searchsorted(edges, values, side="left")
    ids[values == edges[0]] = 1
    ids = np.where((ids == 0) | (ids == len(edges)), 0, ids) - 1
    precision = next((p for p in range(3, 20)
                      if len({_round_fraction(e, p) for e in edges}) == len(edges)), 3)
    breaks = [_round_fraction(e, precision) for e in edges]
    breaks[0] -= 10 ** -precision
    return ids, [f"({low}, {high}]" for low, high in zip(breaks[:-1], breaks[1:])]


def bias_report(columns: Columns) -> list[dict]:
    """For format, image size and file size: synthetic share per bin and single-feature AUC."""
    origin = columns["origin"]
    if len(origin) == 0:
        return []
    formats, format_bins = np.unique(columns["format"], return_inverse=True)
    side = np.maximum(columns["width"], columns["height"])
    size_bins = np.where(side > 0, np.searchsorted(SIZE_EDGES, side, side="left") - 1, -1)
    byte_bins, byte_names = quantile_bins(columns["bytes"],
                                          min(BYTE_BINS, len(np.unique(columns["bytes"]))))
    return [_bias_rows(origin, "format", format_bins.reshape(-1), [str(f) for f in formats]),
            _bias_rows(origin, "max side (px)", size_bins, list(SIZE_NAMES)),
            _bias_rows(origin, "file size (quintiles)", byte_bins, byte_names)]


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


def _describe(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(["min", "p10", "median", "p90", "max"], (float(v) for v in q)))


def _value_counts(values: np.ndarray) -> list[tuple[object, int]]:
    """(value, count) pairs, the most frequent first; ties in the order the values first appear."""
    unique, first, counts = np.unique(values, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    return [(unique[i], int(counts[i])) for i in order]


def inspect(dest: str) -> InspectReport:
    manifest, columns = load_metadata(dest)
    annotation_format = recorded_format(manifest.annotations)
    counts = {c: {label_name(c, int(v), annotation_format): int(n)
                  for v, n in zip(*np.unique(columns[c], return_counts=True))} for c in LABEL_COLUMNS}
    megapixels = columns["width"] * columns["height"] / 1e6
    return InspectReport(
        manifest=manifest, counts=counts,
        formats={str(k): n for k, n in _value_counts(columns["format"])},
        image_sizes={"width": _describe(columns["width"]), "height": _describe(columns["height"]),
                     "megapixels": _describe(megapixels)},
        shard_spread={"samples": _describe(np.array([s.samples for s in manifest.shards])),
                      "bytes": _describe(np.array([s.bytes for s in manifest.shards]))},
        bias=bias_report(columns))


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
