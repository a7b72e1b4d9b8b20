"""Run a command under `torchrun --nproc_per_node=N` on 127.0.0.1 for a test, with a hard timeout
that kills every rank (a hung rank must fail the test, not the CI job)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from helpers.s3local import free_port

ROOT = Path(__file__).resolve().parents[1]


def start_torchrun(args: list[str], nproc: int = 2, log: Path | None = None) -> subprocess.Popen:
    """Start torchrun ARGS in its own session (output to `log`, or a pipe); `kill_tree` stops it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    output = subprocess.PIPE if log is None else log.open("w")
    try:
        return subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]  (the child holds its own copy)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it at once, as a node that vanishes (torchrun starts
    each rank in a session of its own, so killing its process group would miss them)."""
    try:
        victims = [psutil.Process(proc.pid)]
        victims += victims[0].children(recursive=True)
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    proc.wait()
    psutil.wait_procs(victims, timeout=10)


def finish_torchrun(proc: subprocess.Popen, timeout: float = 150, log: Path | None = None) -> str:
    """Wait for a torchrun from `start_torchrun` (its output in `log`, or a pipe); returns the combined
    output, failing the test with its tail on a timeout or a non-zero exit."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        output, _ = proc.communicate()
        output = log.read_text() if log is not None else output
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank hung?):\n{output[-4000:]}")
    output = log.read_text() if log is not None else output
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{output[-4000:]}"
    return output


def run_torchrun(args: list[str], nproc: int = 2, timeout: float = 150) -> str:
    """torchrun ARGS (a script path or `-m module …`); returns the combined output, failing the test
    with its tail on a timeout or a non-zero exit."""
    return finish_torchrun(start_torchrun(args, nproc), timeout)
