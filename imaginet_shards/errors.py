"""The errors imaginet_shards raises for bad data and failed storage, each carrying the fields that
locate the problem and, where one is known, a hint at its likely cause.

Everything derives from `ImaginetError`, so one `except ImaginetError` at a command boundary catches
them all. Each class also keeps the built-in base its callers caught before (`ValueError` for bad
data, `OSError` for storage and a missing shard set, `RuntimeError` for packing), so existing
`except` clauses keep working. Bad argument values stay plain `ValueError`s: they are the caller's
mistake, not the data's. The errors pickle with their fields (they cross process boundaries in the
packer's worker pool).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = ["AnnotationError", "DaliSetupError", "ImageError", "ImaginetError",
           "MissingShardSetError", "PackError", "SampleError", "ShardSetError", "StorageError"]


class ImaginetError(Exception):
    """Base of the package's data and storage errors; `hint` says the likely cause or the remedy."""

    fields: ClassVar[tuple[str, ...]] = ("message", "hint")

    def __init__(self, message: str, hint: str = ""):
        self.message, self.hint = message, hint
        super().__init__(f"{message} ({hint})" if hint else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), tuple(getattr(self, name) for name in self.fields)


class AnnotationError(ImaginetError, ValueError):
    """An annotation file failed validation: `problems` lists every (line, reason) found; `line`
    and `reason` are the first (line 0: the file could not be read at all)."""

    fields = ("file", "problems")

    def __init__(self, file: str, problems: Sequence[tuple[int, str]]):
        if not problems:
            raise ValueError("an AnnotationError needs at least one problem")
        self.file, self.problems = str(file), list(problems)
        self.line, self.reason = self.problems[0]
        shown = "\n".join(f"  {file}:{line}: {reason}" for line, reason in self.problems[:20])
        more = f"\n  … and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{len(self.problems)} bad line(s) in {file}:\n{shown}{more}")


class ImageError(ImaginetError, ValueError):
    """Encoded bytes are not a usable JPEG, PNG or WebP image; `reason` says why."""

    fields = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class ShardSetError(ImaginetError, ValueError):
    """A shard set (or one of its files at `location`) is incomplete, malformed or disagrees with
    its manifest."""

    fields = ("location", "reason", "hint")

    def __init__(self, location: str, reason: str, hint: str = ""):
        self.location, self.reason = str(location), reason
        super().__init__(f"{location}: {reason}", hint)


class MissingShardSetError(ShardSetError, FileNotFoundError):
    """No shard set at `location` (no manifest.json): also a FileNotFoundError."""


class SampleError(ImaginetError, ValueError):
    """Sample `key` of shard `shard` is unusable (unreadable member, undecodable image, ...)."""

    fields = ("shard", "key", "reason", "hint")

    def __init__(self, shard: str, key: str, reason: str, hint: str = ""):
        self.shard, self.key, self.reason = shard, key, reason
        super().__init__(f"{shard}: sample {key}: {reason}", hint)


class DaliSetupError(ImaginetError, RuntimeError):
    """DALI cannot build its pipeline on `device` here (no CUDA, nvJPEG, memory, a bad device
    id): a problem of the machine, never of the data; `reason` is DALI's message."""

    fields = ("device", "reason")

    def __init__(self, device: str, reason: str):
        self.device, self.reason = device, reason
        super().__init__(f"DALI cannot run on {device}: {reason}",
                         "backend='auto' uses the CPU backend instead")


class PackError(ImaginetError, RuntimeError):
    """Packing stopped at `location` (an input file's annotation line, or the destination): bad
    input with `on_error="raise"`, or a destination it must not touch."""

    fields = ("location", "reason", "hint")

    def __init__(self, location: str, reason: str, hint: str = ""):
        self.location, self.reason = str(location), reason
        super().__init__(f"{location}: {reason}", hint)


class StorageError(ImaginetError, OSError):
    """A storage `operation` (naming its URL) failed for good: after retries, or with an error that
    retrying cannot fix."""

    fields = ("operation", "reason")

    def __init__(self, operation: str, reason: str):
        self.operation, self.reason = operation, reason
        super().__init__(f"{operation}: {reason}")
