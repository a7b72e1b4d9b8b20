"""`imaginet-shards bench`: every backend reports images/s, MB/s, CPU time and
peak memory (with DataLoader workers) in its JSON; bad option combinations are refused."""
from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from helpers.shardsets import build_shards
from imaginet_shards.bench.resources import PeakMemory, tree_memory
from imaginet_shards.bench.run import BenchOptions, run_bench
from imaginet_shards.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    shards = build_shards(tmp_path_factory.mktemp("bench"), 24, max_count=8)
    return shards, shards.parent / "src", shards.parent / "src" / "annotations.txt"


@pytest.mark.parametrize("backend", ["cpu", "files", "dali"])
def test_cli_writes_json(dataset, tmp_path, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    shards, root, annotations = dataset
    out = tmp_path / "result.json"
    args = [str(shards), "--backend", backend, "--batch-size", "4", "--batches", "4",
            "--warmup", "1", "--threads", "2", "--repeats", "1", "--stage", "full",
            "--json", str(out)]
    if backend == "files":
        args += ["--root", str(root), "--annotations", str(annotations)]
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())["full"][0]
    assert data["backend"] == backend and data["images"] == 16  # 4 timed batches of 4
    assert data["images_per_sec"] > 0 and data["mb_per_sec"] > 0
    assert data["cpu_ms_per_image"] >= 0  # 0 when the workers had every timed batch ready
    assert data["input_bytes_per_image"] > 1000
    assert data["peak_rss_mb"] >= data["peak_pss_mb"] > 10
    assert "images/s" in result.output


def test_epochs_follow_each_other(dataset):
    shards, _, _ = dataset  # 24 samples, batch 8: 3 batches an epoch, 7 batches span 3 epochs
    result = run_bench(BenchOptions(backend="cpu", shards=str(shards), batch_size=8, batches=7,
                                    warmup=0, threads=1))
    assert result.images == 56


def test_memory_includes_children():
    rss, pss = tree_memory(os.getpid())
    assert rss > 0 and 0 < pss <= rss


def test_peak_memory_counts_its_own_cost():
    """The sampler's CPU time is kept apart, so that benchmarks can leave it out of CPU ms/image."""
    before = time.process_time()
    with PeakMemory(interval=0.01) as memory:
        time.sleep(0.3)
    spent = time.process_time() - before
    assert memory.rss >= memory.pss > 0
    assert 0 < memory.cpu_seconds <= spent


def test_cpu_time_without_sampling_never_runs_backwards():
    """Read between samples, the tree's CPU time less the sampler's own only grows: a reading in
    the middle of a sample must not count part of it that `cpu_seconds` leaves out later (that
    ran up to a whole sample, about 30 ms here, backwards), and this process's time must not be
    rounded to clock ticks the sampler's nanoseconds do not have (that ran up to two ticks back)."""
    with PeakMemory(interval=0.0) as memory:
        readings = [memory.tree_cpu_seconds() for _ in range(300)]
    assert memory.cpu_seconds > 0
    assert all(b >= a for a, b in zip(readings, readings[1:]))


@pytest.mark.parametrize("options,message", [
    (dict(backend="files", shards="x"), "--root and --annotations"),
    (dict(backend="cpu"), "needs a shard set"),
    (dict(backend="gpu", shards="x"), "backend must be"),
    (dict(backend="cpu", shards="x", batches=0), "batches >= 1"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        BenchOptions(**options)
