"""Partitioning (world.py): equal batch counts, disjoint samples, full coverage, over many worlds."""
from __future__ import annotations

import itertools

import pytest

from imaginet_shards.loaders.world import (
    EpochSpec,
    batches_per_rank,
    derive_seed,
    dropped_samples,
    sample_rng,
    shard_order,
    worker_plan,
)

SHARD_COUNTS = [(7,), (5, 3), (10, 10, 3), (4, 9, 1, 6, 2), (0, 8, 0, 5), (1, 1, 1)]


def epoch_positions(counts, world_size, workers, batch_size, drop_last, seed=0, epoch=0):
    """{rank: [(shard, index), ...]} and {rank: batch count}, read through every worker's plan."""
    seen, batches = {}, {}
    for rank in range(world_size):
        spec = EpochSpec(world_size, rank, batch_size, seed, epoch, drop_last)
        seen[rank], batches[rank] = [], 0
        for worker in range(workers):
            plan = worker_plan(counts, spec, workers, worker)
            assert sum(plan.batch_sizes) == plan.samples
            assert all(0 <= b <= batch_size for b in plan.batch_sizes)
            batches[rank] += len(plan.batch_sizes)
            seen[rank] += [(s.shard, i) for s in plan.segments for i in range(s.start, s.stop)]
    return seen, batches


@pytest.mark.parametrize("counts", SHARD_COUNTS)
@pytest.mark.parametrize("world_size,workers", list(itertools.product((1, 2, 3, 4), (1, 2, 3))))
@pytest.mark.parametrize("batch_size", (1, 2, 3))
@pytest.mark.parametrize("drop_last", (True, False))
def test_partition(counts, world_size, workers, batch_size, drop_last):
    total = sum(counts)
    seen, batches = epoch_positions(counts, world_size, workers, batch_size, drop_last, seed=3)
    expected = batches_per_rank(total, world_size, batch_size, drop_last)
    assert set(batches.values()) == {expected}
    everything = [p for rank in range(world_size) for p in seen[rank]]
    assert len(everything) == len(set(everything)), "a sample is read twice"
    assert len(everything) == total - dropped_samples(total, world_size, batch_size, drop_last)
    universe = {(s, i) for s, c in enumerate(counts) for i in range(c)}
    assert set(everything) <= universe
    if drop_last:
        assert all(len(v) == expected * batch_size for v in seen.values())
        assert dropped_samples(total, world_size, batch_size, True) < world_size * batch_size
    else:
        assert set(everything) == universe


def test_eval_batches_are_never_empty_when_samples_suffice():
    # 17 samples, 4 ranks, batch 4: 2 batches each although ranks hold 4 or 5 samples.
    for rank in range(4):
        plan = worker_plan((17,), EpochSpec(4, rank, 4, drop_last=False))
        assert len(plan.batch_sizes) == 2 and min(plan.batch_sizes) >= 1


def test_epochs_reshuffle_and_seed_fixes_order():
    counts = tuple(range(3, 23))
    a = shard_order(len(counts), seed=0, epoch=0)
    assert a == shard_order(len(counts), seed=0, epoch=0)
    assert a != shard_order(len(counts), seed=0, epoch=1)
    assert a != shard_order(len(counts), seed=1, epoch=0)
    assert shard_order(4, 0, 0, shuffle=False) == (0, 1, 2, 3)
    epoch0, _ = epoch_positions(counts, 2, 2, 4, True, epoch=0)
    epoch1, _ = epoch_positions(counts, 2, 2, 4, True, epoch=1)
    assert epoch0 != epoch1


def test_a_worker_touches_few_shards():
    counts = (100,) * 12
    plan = worker_plan(counts, EpochSpec(4, 1, 10), num_workers=3, worker=2)
    assert len(plan.segments) <= 2 and plan.samples == 100


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        EpochSpec(world_size=2, rank=2, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        EpochSpec(world_size=1, rank=0, batch_size=0)
    with pytest.raises(ValueError, match="worker 3"):
        worker_plan((4,), EpochSpec(1, 0, 2), num_workers=3, worker=3)


def test_sample_rng_is_pure():
    assert sample_rng(1, "000000007", 2).random() == sample_rng(1, "000000007", 2).random()
    assert sample_rng(1, "000000007", 2).random() != sample_rng(1, "000000007", 3).random()
    assert sample_rng(1, "000000007", None).random() != sample_rng(1, "000000008", None).random()
    assert derive_seed("a", 1).entropy == derive_seed("a", 1).entropy
