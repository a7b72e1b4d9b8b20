"""Worker processes that die with the process that started them.

A parent killed with SIGKILL (the OOM killer, a scheduler's preemption) runs no cleanup, so the
workers of its process pools would live on as orphans, blocked on queues nobody writes to. Every
pool we start runs `WorkerGuard` in each worker first: on Linux the kernel then sends the worker
SIGKILL the moment its parent exits (prctl PR_SET_PDEATHSIG); elsewhere a watchdog thread polls the
parent's pid. On Linux the signal follows the parent *thread* that started the worker, so a pool
must be used by the thread that created it, or one that outlives it (as pools here are). The
guard also keeps a forked worker's garbage collector away from what it inherited (`WorkerGuard`),
and the parent collects its own garbage before it forks (`before_fork`).
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import psutil

__all__ = ["WorkerGuard", "before_fork", "die_with_parent", "process_pool"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_POLL_S = 0.2
ORPHAN_EXIT_STATUS = 128 + 9  # as if killed by SIGKILL


def die_with_parent(owner: int) -> None:
    """Make this worker process exit as soon as `owner`, the process that started it, dies.

    Exits at once when `owner` is already gone (it died before the guard was armed). With a fork
    server, the worker's parent is the server, which exits when `owner` does.
    """
    armed = _parent_death_signal(signal.SIGKILL)
    parent = os.getppid()
    if parent != owner and not _alive(owner):
        os._exit(ORPHAN_EXIT_STATUS)
    if not armed:
        threading.Thread(target=_watch, args=(parent,), name="imaginet-orphan-watchdog",
                         daemon=True).start()


@dataclass(frozen=True)
class WorkerGuard:
    """A picklable worker initializer: freeze what the worker inherits from the garbage collector
    (see `__call__`), `die_with_parent(owner)`, then `then()` when given.

    Use it as a ProcessPoolExecutor's `initializer` (or through `process_pool`) and as a DataLoader's
    `worker_init_fn` (which passes the worker id, ignored here). Build it in the parent: `owner`
    defaults to the pid of the process that creates the guard.
    """

    then: Callable[[], None] | None = None
    owner: int = field(default_factory=os.getpid)

    def __call__(self, *_worker_id: object) -> None:
        # What a forked worker inherits is the parent's to free: a DALI pipeline left in a
        # reference cycle would hang a collection here, its executor's threads not being copied
        # by the fork. Frozen objects are never collected (nor copied on write by the collector).
        gc.freeze()
        die_with_parent(self.owner)
        if self.then is not None:
            self.then()


def before_fork() -> None:
    """Collect this process's cyclic garbage now, where finalisers can run, before it forks
    workers: a forked worker may collect before its guard freezes what it inherited (Python's own
    after-fork bookkeeping allocates), and a DALI pipeline finalised there would hang it (see
    `WorkerGuard`)."""
    gc.collect()


def process_pool(workers: int, initializer: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of `workers` processes that die with this one (then run
    `initializer`); `before_fork` runs first."""
    before_fork()
    return ProcessPoolExecutor(workers, initializer=WorkerGuard(then=initializer))


def _parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    """True when `pid` runs (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _watch(parent: int) -> None:
    """Exit the process once its parent has changed (the parent died and it was re-parented)."""
    while os.getppid() == parent:
        time.sleep(WATCHDOG_POLL_S)
    os._exit(ORPHAN_EXIT_STATUS)
