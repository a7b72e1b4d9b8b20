"""Killed means gone: the worker processes of `pack`, `perturb` and the CPU loader exit when their
parent is killed with SIGKILL (no cleanup runs in the parent), instead of living on as orphans."""
from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import psutil
import pytest

from helpers.shardsets import build_shards
from helpers.trees import make_dataset
from imaginet_shards.procs import ORPHAN_EXIT_STATUS, WorkerGuard, process_pool

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 3
GONE_WITHIN_S = 3.0  # torch's own DataLoader watchdog would take up to 5 s; ours is immediate
START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """40 images of 256-320 px in shards of 2: 20 shards, work for several perturb workers."""
    return build_shards(tmp_path_factory.mktemp("procs"), 40, max_count=2)


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "parent.log", "w") as log:  # the child writes to its own copy
        return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _workers(proc: subprocess.Popen, count: int, tmp_path: Path) -> list[psutil.Process]:
    """The parent's `count` worker processes, once they all run (fails if the parent exits first)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    parent = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the parent exited ({proc.returncode}) before its {count} workers were seen:\n"
                        + (tmp_path / "parent.log").read_text()[-3000:])
        children = [c for c in parent.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
        if len(children) >= count:
            return children
        time.sleep(0.02)
    pytest.fail(f"{count} workers did not start within {START_TIMEOUT_S} s")


def _kill_and_expect_orphans_gone(proc: subprocess.Popen, workers: list[psutil.Process]) -> None:
    assert proc.poll() is None, "the parent finished before it could be killed: give it more work"
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=GONE_WITHIN_S)
    survivors = [f"{p.pid} ({p.name()})" for p in alive]
    for survivor in alive:
        survivor.kill()
    assert not alive, (f"{len(alive)} of {len(workers)} workers outlived their killed parent by "
                       f"{GONE_WITHIN_S} s: {', '.join(survivors)}")


def test_pack_workers_die_with_a_killed_parent(tmp_path):
    annotations = make_dataset(tmp_path / "src", 120, side=64)
    proc = _start(["-m", "imaginet_shards", "pack", "--root", str(tmp_path / "src"), "--annotations",
                   str(annotations), "--out", str(tmp_path / "out"), "--workers", str(WORKERS),
                   "--max-count", "2"], tmp_path)
    _kill_and_expect_orphans_gone(proc, _workers(proc, WORKERS, tmp_path))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_perturb_workers_die_with_a_killed_parent(source, tmp_path):
    proc = _start(["-m", "imaginet_shards", "perturb", str(source), str(tmp_path / "out"), "--workers",
                   str(WORKERS)], tmp_path)
    _kill_and_expect_orphans_gone(proc, _workers(proc, WORKERS, tmp_path))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_cpu_loader_workers_die_with_a_killed_parent(source, tmp_path):
    script = textwrap.dedent(f"""
        from imaginet_shards.loaders import make_loader
        loader = make_loader({str(source)!r}, backend="cpu", batch_size=2, workers=2, world_size=1,
                             rank=0, device="cpu")
        epoch = 0
        while True:  # until killed
            loader.set_epoch(epoch)
            for images, labels in loader:
                pass
            epoch += 1
    """)
    proc = _start(["-c", script], tmp_path)
    _kill_and_expect_orphans_gone(proc, _workers(proc, 2, tmp_path))


def test_a_worker_whose_owner_is_already_gone_exits_at_once():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process
    ctx = multiprocessing.get_context()
    worker = ctx.Process(target=WorkerGuard(owner=dead.pid))
    worker.start()
    worker.join(10)
    assert worker.exitcode == ORPHAN_EXIT_STATUS
    alive = ctx.Process(target=WorkerGuard())
    alive.start()
    alive.join(10)
    assert alive.exitcode == 0  # the owner (this process) lives: the guard returns


def test_the_guard_pickles_with_its_owner_and_initializer():
    guard = pickle.loads(pickle.dumps(WorkerGuard(then=print)))
    assert guard.owner == os.getpid() and guard.then is print


def test_a_worker_never_finalises_what_it_inherits(tmp_path):
    """A DALI pipeline left in a reference cycle when a pool forks is garbage in the worker too;
    finalising it there waits forever on the parent's executor threads, which the fork did not
    copy. The guard freezes what the worker inherits, so its collections leave it alone."""
    pytest.importorskip("nvidia.dali")
    script = textwrap.dedent("""
        import gc, os
        from concurrent.futures import TimeoutError
        from nvidia.dali import fn, pipeline_def, types
        from imaginet_shards.procs import process_pool

        gc.disable()  # the cycle stays garbage until the worker collects it

        @pipeline_def(batch_size=2, num_threads=2, device_id=None)
        def pipeline():
            return fn.random.uniform(range=[0.0, 1.0], shape=[4])

        with process_pool(1) as pool:  # which collects garbage, but forks only on submit
            pipe = pipeline()
            pipe.build()
            pipe.run()
            cycle = {"pipe": pipe}
            cycle["cycle"] = cycle
            del pipe, cycle
            try:
                pool.submit(gc.collect).result(timeout=60)
            except TimeoutError:
                print("the worker hung collecting the inherited pipeline", flush=True)
                os._exit(3)  # leaving the pool would wait for the hung worker
        print("collected", flush=True)
    """)
    proc = _start(["-c", script], tmp_path)
    try:
        assert proc.wait(timeout=120) == 0, (tmp_path / "parent.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_a_pool_collects_the_parents_garbage_before_it_forks():
    """Cyclic garbage is finalised in the parent before any worker exists, not in a worker."""
    class Node:
        pass

    node = Node()
    node.cycle = node
    alive = weakref.ref(node)
    del node
    gc.disable()
    try:
        assert alive() is not None  # garbage, not yet collected
        with process_pool(1) as pool:
            assert alive() is None
            assert pool.submit(os.getpid).result(timeout=60) != os.getpid()
    finally:
        gc.enable()
