"""Memory and CPU time of a process tree (this process and all its descendants, e.g. DataLoader
workers), read from /proc; the peak memory is sampled in a background thread. Linux only; elsewhere
the peak is this process's own `ru_maxrss` and the CPU time its own."""
from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def _children(root: int) -> list[int]:
    """All descendants of `root`, from the parent pid field of /proc/PID/stat."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(root: int | None = None) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over `root` (default: this process) and its descendants. RSS
    counts pages shared by forked workers once per process; PSS splits them among the sharers."""
    root = os.getpid() if root is None else root
    rss = pss = 0
    for pid in [root, *_children(root)]:
        rss += _field_kb(PROC / str(pid) / "status", "VmRSS:")
        pss += _field_kb(PROC / str(pid) / "smaps_rollup", "Pss:")
    return rss * 1024, pss * 1024


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of `root` (default: this process, all threads) and its live
    descendants."""
    if not PROC.is_dir():
        return time.process_time()
    root = os.getpid() if root is None else root
    ticks = 0
    for pid in [root, *_children(root)]:
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Context manager: samples `tree_memory` every `interval` seconds; `rss` and `pss` hold the
    peaks (bytes) once it exits."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self._record()
            if self._stop.wait(self.interval):
                return

    def _record(self) -> None:
        if PROC.is_dir():
            rss, pss = tree_memory()
        else:
            rss = pss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._record()
