"""Rank 0's run log: metrics as JSON lines (`metrics.jsonl`), mirrored to TensorBoard when installed.

Every record has a `kind` ("step" or "epoch") and an `epoch`. Resuming from a checkpoint taken in
epoch E after global step S first drops what the interrupted run wrote after it (the step records
from step S on, the epoch records from epoch E on), so the file of a resumed run reads like that of
an uninterrupted one.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"


class RunLog:
    """Appends JSON-lines records under `folder`; a no-op object on ranks other than 0."""

    def __init__(self, folder: str | os.PathLike[str], *, enabled: bool = True,
                 keep_before: tuple[int, int] | None = None, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(folder) / METRICS_NAME
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_before is None:
            self.path.write_text("")
        else:
            self._truncate(*keep_before)
        if tensorboard:
            self._tb = _summary_writer(self.path.parent / "tensorboard")

    def _truncate(self, epoch: int, step: int) -> None:
        """Keep only the step records before global step `step` and the epoch records before
        `epoch` (atomic rewrite)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        records = [(line, json.loads(line)) for line in lines if line.strip()]
        kept = [line for line, r in records
                if (r["step"] < step if r["kind"] == "step" else r["epoch"] < epoch)]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: Mapping[str, Any], *, global_step: int | None = None) -> None:
        """Append one record; numeric fields also go to TensorBoard as `{kind}/{field}`."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")
        if self._tb is not None and global_step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._tb.add_scalar(f"{record['kind']}/{key}", value, global_step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_records(folder: str | os.PathLike[str], kind: str | None = None) -> list[dict[str, Any]]:
    """The records of `folder/metrics.jsonl`, optionally only those of one `kind`."""
    path = Path(folder) / METRICS_NAME
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]


def _summary_writer(folder: Path):
    """A TensorBoard SummaryWriter, or None when the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))
