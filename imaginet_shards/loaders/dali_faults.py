"""Naming the sample behind a DALI backend failure.

The loader reads every sample through the shard set before DALI sees it, so a sample whose members
are unreadable (truncated shard, missing `.labels`), or whose bytes are not an image or exceed the
size limits, is refused on the host (`check_batch`) with its shard and key. What remains is an
image DALI's decoders reject although its header is sound: the loader then knows the exact samples
of the failed run, and `first_unusable` finds the culprit among them with a full CPU decode.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from imaginet_shards.codecs.tiles import decode_tiles
from imaginet_shards.errors import SampleError
from imaginet_shards.format.images import ImageCheckError, check_image
from imaginet_shards.io.shardset import Record

HINT = "DALI backend; to skip unusable samples use backend='cpu' with on_error='skip'"


def check_batch(records: Sequence[Record]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(labels, int32 image shapes (height, width, 3)) of a batch's records; a SampleError unless
    every record read cleanly and its image header is sound (format, pixel and byte limits;
    nothing is decoded unless the file looks truncated). It names the bad sample that comes first
    in its shard (for a truncated shard: where the cut is), as the CPU backend does."""
    bad, labels, shapes = [], [], []
    for record in records:
        reason = record.error
        if record.tiled is not None:  # its header was checked when it was read
            header = record.tiled.header
            shapes.append(np.array([header.height, header.width, 3], dtype=np.int32))
        elif not reason:
            try:
                info = check_image(record.image)
                shapes.append(np.array([info.height, info.width, 3], dtype=np.int32))
            except ImageCheckError as exc:
                reason = str(exc)
        if reason or record.labels is None:
            bad.append((record.shard, record.key, reason or "no labels"))
        else:
            labels.append(record.labels)
    if bad:
        raise SampleError(*min(bad), HINT)
    return labels, shapes


def first_unusable(records: Iterable[Record]) -> tuple[str, str, str] | None:
    """(shard, key, reason) of the record that a full CPU decode rejects and that comes first in
    its shard; None if none is rejected."""
    bad = []
    for record in records:
        try:
            if record.tiled is not None:
                decode_tiles(record.tiled)
            elif check_image(record.image, decode=True).format == "tiles":
                decode_tiles(record.image)
        except ValueError as exc:
            bad.append((record.shard, record.key, str(exc)))
    return min(bad) if bad else None


def dali_reason(message: str) -> str:
    """The cause in a DALI error message, without the pipeline traceback and C++ context."""
    tail = message.rsplit("encountered:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines()]
    return " ".join(line for line in lines
                    if line and not line.startswith(("C++ context", "Current pipeline")))
