"""Preemption: a torchrun training run (gloo, CPU) is killed with SIGKILL at a random step after a
mid-epoch checkpoint and resumed from that checkpoint on the same number of processes (2 -> 2) and on
others (2 -> 1, killed again, -> 2). Every rank logs the sample keys of every step (`--key-log`).
Runs that do not depend on each other run side by side (the uninterrupted one with the first killed
one; the two resumptions of its checkpoint), which halves the wall time on two cores.

Over the epoch, the steps before each checkpoint and those of the final run deliver exactly the
epoch's samples minus the drop_last tail (total % global batch), none twice, every rank the same
number of batches; on the same world size the resumed run repeats the uninterrupted run's batches
and losses bit for bit.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers.shardsets import build_shards
from helpers.torchrun import finish_torchrun, kill_tree, run_torchrun, start_torchrun
from imaginet_shards.io.shardset import load_index, open_shard_set
from imaginet_shards.loaders import make_loader
from imaginet_train.checkpoint import load_checkpoint
from imaginet_train.runlog import read_records

COUNT = 82  # 20 steps of 4, a tail of 2
GLOBAL_BATCH = 4
EVERY = 2  # steps between checkpoints
STEPS = COUNT // GLOBAL_BATCH
TIMEOUT_S = 240
TIMING_FIELDS = {"seconds", "images_per_s", "data_fraction"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """82 tiny JPEG and WebP images in shards of 9 (the last one 1). No PNG: its window decoder
    would load its numba kernel in each of the nine rank processes (most of a CPU-second each)."""
    return build_shards(tmp_path_factory.mktemp("preempt"), COUNT, max_count=9, sizes=(36, 48),
                        formats=("jpg", "webp"))


def _args(shards: Path, out: Path, keys: Path) -> list[str]:
    """The same command line for every start, as a scheduler restarts a job (--auto-resume)."""
    return ["-m", "imaginet_train", "selfcon", str(shards), "--out", str(out), "--arch", "small",
            "--feat-dim", "16", "--epochs", "1", "--batch-size", str(GLOBAL_BATCH), "--crop", "32",
            "--warmup-epochs", "0.5", "--backend", "cpu", "--workers", "0", "--threads", "1",
            "--no-progress", "--log-every", "1", "--checkpoint-every-steps", str(EVERY),
            "--key-log", str(keys), "--auto-resume"]


def _steps(keys: Path) -> list[dict]:
    """Every rank's key-log lines of one run."""
    return [json.loads(line) for path in sorted(keys.glob("rank*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.fixture
def background():
    """Torchruns started to run alongside others; any still running when the test ends is killed."""
    procs: list = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            kill_tree(proc)


def _run_and_kill(args: list[str], nproc: int, keys: Path, lines: int, log: Path) -> None:
    """Run torchrun and SIGKILL all of it once rank 0 has logged `lines` steps (after a checkpoint)."""
    proc = start_torchrun(args, nproc, log)
    deadline = time.monotonic() + TIMEOUT_S
    rank0 = keys / "rank0.jsonl"
    while not (rank0.exists() and len(rank0.read_text().splitlines()) >= lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"the run ended or hung before step {lines} (exit {proc.returncode}):\n"
                        + log.read_text()[-3000:])
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    kill_tree(proc)


def _expected_keys(shards: Path) -> set[str]:
    """The keys an uninterrupted epoch 0 delivers on 2 ranks (the loaders' order)."""
    shard_set = open_shard_set(str(shards))
    indexes = [load_index(shard_set, entry) for entry in shard_set.manifest.shards]
    keys = set()
    for rank in range(2):
        loader = make_loader(str(shards), backend="cpu", batch_size=GLOBAL_BATCH // 2, rank=rank,
                             world_size=2, seed=0, workers=0, device="cpu")
        order = loader.order()
        keys |= {indexes[s].key(i) for s, i in zip(order.shards.tolist(), order.samples.tolist())}
        loader.close()
    all_keys = {index.key(i) for index in indexes for i in range(len(index.samples))}
    assert len(all_keys) == COUNT and len(keys) == COUNT - COUNT % GLOBAL_BATCH
    return keys


def _check_epoch(parts: list[list[dict]], expected: set[str], note: str) -> None:
    keys = [key for steps in parts for step in steps for key in step["keys"]]
    twice = [k for k, n in Counter(keys).items() if n > 1]
    assert not twice, f"{note}: delivered twice: {twice}"
    assert set(keys) == expected, (f"{note}: missing {sorted(expected - set(keys))}, "
                                   f"unexpected {sorted(set(keys) - expected)}")
    for steps in parts:  # every rank of a run took part in every step
        per_rank = Counter(step["rank"] for step in steps)
        assert len(set(per_rank.values())) <= 1, f"{note}: batches per rank differ: {per_rank}"


def _losses(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_records(folder)]


def _before(steps: list[dict], step: int) -> list[dict]:
    return [s for s in steps if s["step"] < step]


def _between(steps: list[dict], start: int, stop: int) -> list[dict]:
    return [s for s in steps if start <= s["step"] < stop]


@pytest.mark.slow
@pytest.mark.timeout(900)  # five torchrun launches in three rounds: under a minute on an idle machine
def test_killed_runs_resume_mid_epoch_on_the_same_and_other_world_sizes(shards, tmp_path, background):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    note = f"kill points drawn with seed {seed}"
    expected = _expected_keys(shards)

    # A: the uninterrupted run on 2 ranks, while B runs: 2 ranks, killed at a random step after
    # its first checkpoint.
    run_a = start_torchrun(_args(shards, tmp_path / "a", tmp_path / "keys-a"), 2, tmp_path / "a.log")
    background.append(run_a)
    _run_and_kill(_args(shards, tmp_path / "b", tmp_path / "keys-b"), 2, tmp_path / "keys-b",
                  rng.randint(EVERY + 1, 5), tmp_path / "b.log")
    saved_b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"]
    assert EVERY <= saved_b < STEPS, note
    killed = _steps(tmp_path / "keys-b")
    shutil.copytree(tmp_path / "b", tmp_path / "d")

    # C: B resumed on 2 ranks, started now; D (below) runs meanwhile.
    run_c = start_torchrun(_args(shards, tmp_path / "b", tmp_path / "keys-c"), 2, tmp_path / "c.log")
    background.append(run_c)

    # D: B resumed on 1 process, killed again after a checkpoint of its own.
    _run_and_kill(_args(shards, tmp_path / "d", tmp_path / "keys-d"), 1,
                  tmp_path / "keys-d", rng.randint(EVERY + 1, 5), tmp_path / "d.log")

    finish_torchrun(run_a, TIMEOUT_S, tmp_path / "a.log")
    straight = _steps(tmp_path / "keys-a")
    _check_epoch([straight], expected, f"uninterrupted; {note}")

    # C: the uninterrupted run's batches and losses, bit for bit.
    finish_torchrun(run_c, TIMEOUT_S, tmp_path / "c.log")
    resumed = _steps(tmp_path / "keys-c")
    assert min(s["step"] for s in resumed) == saved_b, note
    _check_epoch([_before(killed, saved_b), resumed], expected, f"2 -> 2; {note}")
    by_step = {(s["step"], s["rank"]): s["keys"] for s in straight}
    assert all(by_step[s["step"], s["rank"]] == s["keys"] for s in resumed), f"2 -> 2 batches differ; {note}"
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a"), note

    # D's checkpoint; E: D resumed on 2 ranks.
    saved_d = load_checkpoint(tmp_path / "d" / "checkpoint.pt")["step"]
    assert saved_b < saved_d < STEPS, note
    one = _steps(tmp_path / "keys-d")
    assert {s["world_size"] for s in one} == {1} and min(s["step"] for s in one) == saved_b, note
    run_torchrun(_args(shards, tmp_path / "d", tmp_path / "keys-e"), nproc=2, timeout=TIMEOUT_S)
    final = _steps(tmp_path / "keys-e")
    assert min(s["step"] for s in final) == saved_d and max(s["step"] for s in final) == STEPS - 1, note
    _check_epoch([_before(killed, saved_b), _between(one, saved_b, saved_d), final], expected,
                 f"2 -> 1 -> 2; {note}")
    state = load_checkpoint(tmp_path / "d" / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["world_size"]) == (1, STEPS, 2)
