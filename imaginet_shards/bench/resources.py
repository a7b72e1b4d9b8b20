"""Memory and CPU time of a process tree (this process and all its descendants, e.g. DataLoader
workers), through psutil; the peak memory is sampled in a background thread.

Sampling is not free: the kernel walks every page of a process to give its PSS (about 20 ms of CPU
per process with torch loaded), so the sampler keeps its own CPU time for benchmarks to subtract."""
from __future__ import annotations

import os
import threading
import time
from types import TracebackType

import psutil

__all__ = ["PeakMemory", "tree_cpu_seconds", "tree_memory"]


def _tree(root: int | None) -> list[psutil.Process]:
    process = psutil.Process(root)
    return [process, *process.children(recursive=True)]


def tree_memory(root: int | None = None) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over `root` (default: this process) and its descendants. RSS
    counts pages shared by forked workers once per process; PSS splits them among the sharers (RSS
    where the platform has no PSS)."""
    rss = pss = 0
    for process in _tree(root):
        try:
            full = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended meanwhile, or not ours
            continue
        rss += full.rss
        pss += getattr(full, "pss", full.rss)
    return rss, pss


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of `root` (default: this process, all threads) and its live
    descendants. This process's own time comes from its nanosecond clock, not from psutil's clock
    ticks, so that it agrees exactly with `time.thread_time()` readings of its threads."""
    total = 0.0
    for process in _tree(root):
        if process.pid == os.getpid():
            total += time.process_time()
            continue
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class PeakMemory:
    """Context manager: samples `tree_memory` every `interval` seconds; `rss` and `pss` hold the
    peaks (bytes) once it exits, `cpu_seconds` what the sampling itself cost so far, and
    `tree_cpu_seconds()` the tree's CPU time without it."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.rss = self.pss = 0
        self.cpu_seconds = 0.0
        self._lock = threading.Lock()  # held through a sample: its cost is counted whole or not yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def tree_cpu_seconds(self) -> float:
        """`tree_cpu_seconds()` of this process tree less the sampling's own CPU time, read between
        samples (mid-sample, the tree would already hold CPU time `cpu_seconds` does not)."""
        with self._lock:
            return tree_cpu_seconds() - self.cpu_seconds

    def _sample(self) -> None:
        while True:
            self._record()
            if self._stop.wait(self.interval):
                return

    def _record(self) -> None:
        with self._lock:
            start = time.thread_time()
            rss, pss = tree_memory()
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self.cpu_seconds += time.thread_time() - start

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._record()
