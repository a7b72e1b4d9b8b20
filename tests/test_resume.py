"""Mid-epoch resume on the same or another world size: the partition arithmetic (world.py) over many
cases, and the CPU backend's state_dict / load_state_dict end to end."""
from __future__ import annotations

import json

import pytest
import torch

from helpers.shardsets import build_shards
from imaginet_shards.loaders import make_loader
from imaginet_shards.loaders.world import (
    EpochSpec,
    Leg,
    batches_per_rank,
    delivered_samples,
    dropped_samples,
    rank_order,
)

COUNTS = (13, 7, 0, 22, 9, 17)  # 68 samples
CHANGES = [(1, 2), (2, 3), (4, 2), (3, 1), (2, 2), (1, 1)]
GLOBAL_BATCH = 12  # divisible by every world size above


def keys_of(order) -> list[tuple[int, int]]:
    return list(zip(order.shards.tolist(), order.samples.tolist()))


def orders(world: int, legs=(), *, seed=5, epoch=1, drop_last=True, buffer=8, counts=COUNTS):
    batch = GLOBAL_BATCH // world
    return [rank_order(counts, EpochSpec(world, r, batch, seed, epoch, drop_last), buffer, legs)
            for r in range(world)]


@pytest.mark.parametrize("before,after", CHANGES)
@pytest.mark.parametrize("point", ["start", "first", "middle", "last", "end"])
def test_resume_delivers_every_sample_once(before, after, point):
    full = orders(before)
    n = len(full[0])
    k = {"start": 0, "first": 1, "middle": n // 2, "last": n - 1, "end": n}[point]
    first_leg = [key for order in full for key in keys_of(order)[:k * (GLOBAL_BATCH // before)]]
    resumed = orders(after, [Leg(before, GLOBAL_BATCH // before, k)])
    assert len({len(order) for order in resumed}) == 1, "ranks got different batch counts"
    assert len(resumed[0]) == n - k
    assert all(set(o.batch_sizes) <= {GLOBAL_BATCH // after} for o in resumed)
    second_leg = [key for order in resumed for key in keys_of(order)]
    everything = first_leg + second_leg
    assert len(everything) == len(set(everything)), "a sample was delivered twice"
    total = sum(COUNTS)
    assert len(everything) == total - dropped_samples(total, before, GLOBAL_BATCH // before, True)
    assert delivered_samples(COUNTS, EpochSpec(after, 0, GLOBAL_BATCH // after, 5, 1), 8,
                             [Leg(before, GLOBAL_BATCH // before, k)]) == len(first_leg)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_same_world_resume_continues_each_rank_exactly(world):
    full = orders(world)
    for k in range(len(full[0]) + 1):
        resumed = orders(world, [Leg(world, GLOBAL_BATCH // world, k)])
        for rank in range(world):
            batch = GLOBAL_BATCH // world
            assert keys_of(resumed[rank]) == keys_of(full[rank])[k * batch:]


def test_chained_resumes_and_eval_epochs():
    legs = [Leg(1, 12, 1), Leg(2, 6, 1), Leg(3, 4, 1)]
    seen = [key for order in orders(1) for key in keys_of(order)[:12]]
    for i in range(1, len(legs)):
        for order in orders(legs[i].world_size, legs[:i]):
            seen += keys_of(order)[:legs[i].batch_size]
    last = orders(4, legs)
    seen += [key for order in last for key in keys_of(order)]
    assert len(seen) == len(set(seen)) == 60  # 68 minus the first leg's drop_last tail of 8
    # drop_last=False (evaluation): nothing dropped, ranks keep equal batch counts
    full = orders(3, drop_last=False)
    first = [key for order in full for key in keys_of(order)[:4]]
    rest = orders(2, [Leg(3, 4, 1)], drop_last=False)
    assert len({len(o) for o in rest}) == 1
    keys = first + [key for order in rest for key in keys_of(order)]
    assert sorted(keys) == sorted((s, i) for s, c in enumerate(COUNTS) for i in range(c))


def test_uneven_resume_is_refused():
    with pytest.raises(ValueError, match="cannot be divided evenly.*global batch"):
        rank_order(COUNTS, EpochSpec(5, 0, 3, 5, 1), 8, [Leg(2, 6, 1)])
    with pytest.raises(ValueError, match="claims 9 batches"):
        rank_order(COUNTS, EpochSpec(2, 0, 6, 5, 1), 8, [Leg(2, 6, 9)])


def test_shuffle_is_local_and_seeded():
    counts = (500,) * 4
    a = rank_order(counts, EpochSpec(1, 0, 10, 3, 0), 64)
    assert keys_of(a) == keys_of(rank_order(counts, EpochSpec(1, 0, 10, 3, 0), 64))
    assert keys_of(a) != keys_of(rank_order(counts, EpochSpec(1, 0, 10, 3, 1), 64))
    plain = rank_order(counts, EpochSpec(1, 0, 10, 3, 0), 0)
    position = {key: i for i, key in enumerate(keys_of(plain))}
    moves = [abs(position[key] - i) for i, key in enumerate(keys_of(a))]
    assert 0 < max(moves) < 64
    assert batches_per_rank(2000, 1, 10, True) == len(a)


# --- the CPU backend, end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("resume"), 30, max_count=7, sizes=(96, 128))


def loaders(shards, world, **kwargs):
    options = dict(backend="cpu", preset="train", seed=7, workers=2, shuffle_buffer=6)
    options.update(kwargs)
    return [make_loader(shards, batch_size=GLOBAL_BATCH // world, rank=r, world_size=world,
                        **options) for r in range(world)]


def run(loader, limit=None):
    out = []
    for i, batch in enumerate(loader.batches()):
        out.append((batch.keys, batch.images))
        if limit is not None and i + 1 == limit:
            break
    return out


@pytest.mark.parametrize("before,after", [(1, 2), (2, 3), (4, 2), (3, 1), (2, 2)])
def test_cpu_loader_resumes_on_any_world_size(shards, before, after):
    # worker counts differ between the runs on purpose: they must not change what is delivered
    first = loaders(shards, before, workers=0)
    for loader in first:
        loader.set_epoch(1)
    taken = [run(loader, 1) for loader in first]
    state = json.loads(json.dumps(first[0].state_dict()))  # what a checkpoint stores
    assert all(loader.state_dict() == state for loader in first)
    assert state["epoch"] == 1 and state["legs"] == [[before, GLOBAL_BATCH // before, 1]]
    assert state["delivered"] == GLOBAL_BATCH
    second = loaders(shards, after, workers=2 if after == 1 else 1)
    for loader in second:
        loader.load_state_dict(state)
        loader.set_epoch(1)  # a trainer's loop does this; the loaded position is kept
    rest = [run(loader) for loader in second]
    assert len({len(r) for r in rest}) == 1
    keys = [k for part in taken + rest for batch_keys, _ in part for k in batch_keys]
    assert len(keys) == len(set(keys)) == 24  # 30 minus the tail of 6
    if before == after:  # same world: the very same batches, pixel for pixel
        uninterrupted = loaders(shards, before, workers=0)
        for loader, mine in zip(uninterrupted, rest):
            loader.set_epoch(1)
            reference = run(loader)[1:]
            assert [k for k, _ in reference] == [k for k, _ in mine]
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(reference, mine))
    for loader in first + second:
        loader.close()


def test_cpu_loader_state_after_a_whole_epoch_and_refusals(shards, tmp_path):
    loader, = loaders(shards, 1, workers=0)
    assert len(run(loader)) == len(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["legs"], state["delivered"]) == (1, [], 0)
    assert len(run(loader)) == len(loader)  # iterating the same epoch again: a whole epoch
    other, = loaders(shards, 1, workers=0, seed=8)
    with pytest.raises(ValueError, match="seed \\(saved 7, now 8\\)"):
        other.load_state_dict(state)
    copy = build_shards(tmp_path, 30, max_count=5, sizes=(96, 128))
    foreign, = loaders(copy, 1, workers=0)
    with pytest.raises(ValueError, match="shard_set"):
        foreign.load_state_dict(state)
    odd, = [make_loader(shards, backend="cpu", preset="train", seed=7, batch_size=5,
                        shuffle_buffer=6, workers=0)]
    partial = loaders(shards, 1, workers=0)[0]
    run(partial, 1)
    with pytest.raises(ValueError, match="cannot be divided evenly"):
        odd.load_state_dict(partial.state_dict())
