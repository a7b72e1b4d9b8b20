"""The members of one sample in a shard, defined once for the writers (pack, perturb) and the readers
(verify, shard-set reading, stats): names, order, encodings and size limits
(docs/architecture.md, "The shard format").

A sample is four adjacent members: `{key}.{jpg|png|webp}` (the image's bytes), `{key}.cls` (origin
as ASCII), `{key}.labels` (4 × int32 little-endian) and `{key}.json` (source path and line, labels,
sha256, size in bytes and pixels, format).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imaginet_shards.format.annotations import LABEL_COLUMNS
from imaginet_shards.format.images import FORMAT_MEMBER, IMAGE_MEMBERS

__all__ = ["IMAGE_MEMBERS", "LABEL_BYTES", "META_MEMBERS", "MAX_META_BYTES", "decode_labels",
           "encode_members", "label_members", "member_order_problem"]

META_MEMBERS: tuple[str, ...] = ("cls", "labels", "json")
MAX_META_BYTES = 1 << 20  # a .cls, .labels or .json member above this is refused unread
LABEL_BYTES = 4 * len(LABEL_COLUMNS)


def encode_members(key: str, data: bytes, fmt: str, labels: Sequence[int], meta: Mapping[str, Any]
                   ) -> list[tuple[str, bytes]]:
    """The sample's members in order: image, .cls, .labels, .json. The .json holds `meta` plus
    the key, the labels by name, and the image's sha256 and size."""
    record = {**meta, "key": key, "labels": dict(zip(LABEL_COLUMNS, labels, strict=True)),
              "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": fmt}
    return [(FORMAT_MEMBER[fmt], data), *label_members(labels),
            ("json", json.dumps(record, sort_keys=True).encode())]


def label_members(labels: Sequence[int]) -> list[tuple[str, bytes]]:
    """The .cls and .labels members of a sample with `labels`."""
    return [("cls", str(labels[0]).encode()), ("labels", np.asarray(labels, dtype="<i4").tobytes())]


def decode_labels(raw: bytes) -> np.ndarray:
    """The int64 label vector of a .labels member; ValueError if it is not 4 × int32."""
    if len(raw) != LABEL_BYTES:
        raise ValueError(f".labels holds {len(raw)} bytes, expected {LABEL_BYTES}")
    return np.frombuffer(raw, dtype="<i4").astype(np.int64)


def member_order_problem(extensions: Sequence[str]) -> str | None:
    """Why a sample's member extensions are not image, cls, labels, json in that order; None if
    they are."""
    if len(extensions) == 4 and extensions[0] in IMAGE_MEMBERS \
            and tuple(extensions[1:]) == META_MEMBERS:
        return None
    return (f"incomplete or misordered sample: members {list(extensions)}, expected "
            f"[{'|'.join(IMAGE_MEMBERS)}, {', '.join(META_MEMBERS)}]")
