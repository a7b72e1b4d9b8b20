"""Turning DALI failures into errors that name the shard and the sample key.

DALI reports a failing sample in one of three ways: its source info ("…/NAME.tar:OFFSET:KEY.ext",
from the decoders when a decode fails), the line of the index file it rejected (the reader: member
outside the archive, missing component), or only its slot in the batch (nvImageCodec rejecting
bytes that are not an image). `describe_failure` handles the first two; `find_unusable` finds the
third by checking the samples DALI may have read with the CPU checks. `check_complete` runs before
DALI reads a shard: a member cut by the end of a memory-mapped file crashes DALI's process.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from imaginet_shards.errors import SampleError
from imaginet_shards.format.images import ImageCheckError, check_image
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import ShardIndex, ShardSet, read_samples
from imaginet_shards.loaders.world import WorkerPlan

_SAMPLE_RE = re.compile(r"([^\s/:\"]+\.tar):\d+:([^\s.]+)\.\w+")
_INDEX_RE = re.compile(r"index file at \"[^\"]*?([^/\"]+)\.idx\" line (\d+)")


def check_complete(shards: ShardSet, index: ShardIndex, start: int, stop: int) -> None:
    """Raise a SampleError naming the first of samples [start, stop) whose members reach past the
    end of the shard file (DALI itself only checks where members start)."""
    def end(i: int) -> int:
        return max(member.offset + member.size for member in index.samples[i])

    name = index.entry.name
    size = storage.size(shards.location(name))
    if start < stop and end(stop - 1) > size:  # samples lie in tar order: the last ends last
        first = next(i for i in range(start, stop) if end(i) > size)
        raise SampleError(name, index.key(first), f"truncated shard ({size} bytes, the sample's "
                                                  f"members end at byte {end(first)})")


def describe_failure(message: str, segments: Mapping[str, tuple[ShardIndex, int]]
                     ) -> tuple[str, str] | None:
    """(shard, key) from a DALI error's source info, or from the line of the segment index it
    rejected (`segments`: index file stem -> (shard index, first sample); DALI counts lines from 0,
    the header); None when the message names neither."""
    sample = _SAMPLE_RE.search(message)
    if sample:
        return sample.group(1), sample.group(2)
    found = _INDEX_RE.search(message)
    if found and found.group(1) in segments:
        index, start = segments[found.group(1)]
        return index.entry.name, index.key(start + int(found.group(2)) - 1)
    return None


def find_unusable(shards: ShardSet, plan: WorkerPlan, indexes: Mapping[int, ShardIndex],
                  limit: int) -> tuple[str, str, str] | None:
    """(shard, key, reason) of the first of the plan's first `limit` samples that the CPU checks
    reject (unreadable member, or `images.check_image` with a full decode); None if none."""
    for segment in plan.segments:
        stop = min(segment.stop, segment.start + limit)
        for record in read_samples(shards, indexes[segment.shard], segment.start, stop):
            reason = record.error
            if not reason:
                try:
                    check_image(record.image, decode=True)
                except ImageCheckError as exc:
                    reason = str(exc)
            if reason:
                return record.shard, record.key, reason
        limit -= stop - segment.start
        if limit <= 0:
            break
    return None


def dali_reason(message: str) -> str:
    """The cause in a DALI error message, without the pipeline traceback and C++ context."""
    tail = message.rsplit("encountered:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines()]
    return " ".join(line for line in lines
                    if line and not line.startswith(("C++ context", "Current pipeline")))
