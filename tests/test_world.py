"""Partitioning (world.py): equal batch counts, disjoint samples, full coverage, over many worlds."""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from imaginet_shards.loaders.world import (
    EpochSpec,
    batches_per_rank,
    derive_seed,
    dropped_samples,
    rank_order,
    sample_rng,
    shard_order,
)

SHARD_COUNTS = [(7,), (5, 3), (10, 10, 3), (4, 9, 1, 6, 2), (0, 8, 0, 5), (1, 1, 1)]


def epoch_positions(counts, world_size, buffer, batch_size, drop_last, seed=0, epoch=0):
    """{rank: [(shard, index), ...]} and {rank: batch count}, from every rank's order."""
    seen, batches = {}, {}
    for rank in range(world_size):
        order = rank_order(counts, EpochSpec(world_size, rank, batch_size, seed, epoch, drop_last),
                           buffer)
        assert sum(order.batch_sizes) == len(order.shards) == len(order.samples)
        assert all(0 <= b <= batch_size for b in order.batch_sizes)
        batches[rank] = len(order)
        seen[rank] = list(zip(order.shards.tolist(), order.samples.tolist()))
    return seen, batches


@pytest.mark.parametrize("counts", SHARD_COUNTS)
@pytest.mark.parametrize("world_size,buffer", list(itertools.product((1, 2, 3, 4), (0, 4))))
@pytest.mark.parametrize("batch_size", (1, 2, 3))
@pytest.mark.parametrize("drop_last", (True, False))
def test_partition(counts, world_size, buffer, batch_size, drop_last):
    total = sum(counts)
    seen, batches = epoch_positions(counts, world_size, buffer, batch_size, drop_last, seed=3)
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
        order = rank_order((17,), EpochSpec(4, rank, 4, drop_last=False))
        assert len(order) == 2 and min(order.batch_sizes) >= 1


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


def test_a_rank_touches_few_shards():
    counts = (100,) * 12
    order = rank_order(counts, EpochSpec(4, 1, 10), 16)
    assert len(set(order.shards.tolist())) <= 4 and len(order.shards) == 300


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        EpochSpec(world_size=2, rank=2, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        EpochSpec(world_size=1, rank=0, batch_size=0)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        rank_order((4, -1), EpochSpec(1, 0, 2))


def test_sample_rng_is_pure():
    assert sample_rng(1, "000000007", 2).random() == sample_rng(1, "000000007", 2).random()
    assert sample_rng(1, "000000007", 2).random() != sample_rng(1, "000000007", 3).random()
    assert sample_rng(1, "000000007", None).random() != sample_rng(1, "000000008", None).random()
    assert np.array_equal(derive_seed("a", 1).generate_state(4), derive_seed("a", 1).generate_state(4))


@pytest.mark.parametrize("parts", [(3, 0, 0, "000000001"), (0,), (2**32, 1), (2**64 + 5, 0, 2**31),
                                   (1, "", "é", 0), (3, 7, "000123456")])
def test_derive_seed_mixes_what_numpy_makes_of_the_integers(parts):
    """Seeds stay as they were: the same state as numpy's SeedSequence of the list of integers
    (strings as the first 16 bytes of their SHA-256, little-endian)."""
    integers = [int.from_bytes(hashlib.sha256(p.encode()).digest()[:16], "little") if isinstance(p, str)
                else p for p in parts]
    expected = np.random.SeedSequence(integers)
    assert np.array_equal(derive_seed(*parts).generate_state(8), expected.generate_state(8))
