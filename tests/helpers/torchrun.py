"""Run a command under `torchrun --nproc_per_node=N` on 127.0.0.1 for a test, with a hard timeout
that kills every rank (a hung rank must fail the test, not the CI job)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.s3local import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_torchrun(args: list[str], nproc: int = 2, timeout: float = 150) -> str:
    """torchrun ARGS (a script path or `-m module …`); returns the combined output, failing the test
    with its tail on a timeout or a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank hung?):\n{output[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{output[-4000:]}"
    return output
