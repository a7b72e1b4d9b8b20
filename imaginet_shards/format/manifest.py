"""manifest.json: the record that makes a shard set complete (docs/architecture.md, "The shard format"). Written last, atomically."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from imaginet_shards.errors import ShardSetError
from imaginet_shards.format.annotations import LABEL_COLUMNS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard: tar name, index name, sample count, size, checksum, label histogram, first key."""

    name: str
    index: str
    samples: int
    bytes: int
    sha256: str
    histogram: dict[str, dict[str, int]]
    first_key: str = ""


@dataclass(frozen=True)
class Skipped:
    """An input left out of the shard set, and why."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class Manifest:
    format_version: int
    tool_version: str
    annotations: dict[str, Any]
    options: dict[str, Any]
    shards: tuple[ShardEntry, ...]
    totals: dict[str, Any]
    skipped: tuple[Skipped, ...] = field(default=())
    plan_sha256: str = ""

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def sha256(self) -> str:
        """The shard set's identity: the SHA-256 of its canonical manifest JSON (`to_json`)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {data.get('format_version')!r} "
                                 f"(this tool reads {FORMAT_VERSION})")
            return cls(
                format_version=data["format_version"],
                tool_version=data["tool_version"],
                annotations=data["annotations"],
                options=data["options"],
                shards=tuple(ShardEntry(**s) for s in data["shards"]),
                totals=data["totals"],
                skipped=tuple(Skipped(**s) for s in data.get("skipped", ())),
                plan_sha256=data.get("plan_sha256", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardSetError(source, f"not a valid imaginet manifest: {exc}") from exc


def build_manifest(annotations: dict[str, Any], options: dict[str, Any], entries: Iterable[ShardEntry],
                   skipped: Iterable[Skipped], plan_sha256: str) -> Manifest:
    """The manifest of a finished shard set (pack's and perturb's): this format and tool version,
    and the totals and merged label histogram of `entries`."""
    from imaginet_shards import __version__

    shards, left_out = tuple(entries), tuple(skipped)
    return Manifest(
        format_version=FORMAT_VERSION, tool_version=__version__, annotations=annotations,
        options=options, shards=shards,
        totals={"shards": len(shards), "samples": sum(e.samples for e in shards),
                "bytes": sum(e.bytes for e in shards), "skipped": len(left_out),
                "histogram": merge_histograms(e.histogram for e in shards)},
        skipped=left_out, plan_sha256=plan_sha256)


def label_histogram(labels: Iterable[tuple[int, ...]]) -> dict[str, dict[str, int]]:
    """Counts of each value of each label column."""
    array = np.asarray(list(labels), dtype=np.int64).reshape(-1, 4)
    return {name: {str(v): int(c) for v, c in zip(*np.unique(array[:, i], return_counts=True))}
            for i, name in enumerate(LABEL_COLUMNS)}


def merge_histograms(histograms: Iterable[dict]) -> dict[str, dict[str, int]]:
    """The sum of several label histograms."""
    total: dict[str, dict[str, int]] = {name: {} for name in LABEL_COLUMNS}
    for histogram in histograms:
        for name, counts in histogram.items():
            for value, count in counts.items():
                total[name][value] = total[name].get(value, 0) + count
    return {name: dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
            for name, counts in total.items()}
