"""Mid-epoch resume on the DALI backend (CPU device): the base class's state_dict/load_state_dict
over DALI's delivery, on the same and on other world sizes, and the same batches as the CPU
backend."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("nvidia.dali")

from helpers.shardsets import build_shards  # noqa: E402
from imaginet_shards.augment.spec import Blur, Compress, Crop, Flip, OneOf, Preset, Rot90  # noqa: E402
from test_resume import GLOBAL_BATCH, loaders, run  # noqa: E402

# deterministic and quick to build (no padding branch): the order, not the graph, is under test
CENTRE = Preset("centre", 64, (Crop(64, random=False),))
# every draw DALI executes without a generator of its own (its Gaussian noise has one)
RANDOM = Preset("random", 64, (Crop(64, random=True), OneOf(0.7, (Compress(), Blur())),
                               Rot90(0.5), Flip(0.5)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("resume-dali"), 30, max_count=7, sizes=(96, 128))


def dali(shards, world, **kwargs):
    """DALI loaders of every rank (CENTRE unless told)."""
    options = dict(backend="dali", workers=1, device="cpu", preset=CENTRE)
    options.update(kwargs)
    return loaders(shards, world, **options)


def interrupted(shards, before, after, at, **kwargs):
    """(batches delivered before the interruption per rank, the rest per rank after resuming on
    `after` ranks from the state saved after `at` batches)."""
    first = dali(shards, before, **kwargs)
    for loader in first:
        loader.set_epoch(1)
    taken = [run(loader, at) for loader in first]
    state = json.loads(json.dumps(first[0].state_dict()))  # what a checkpoint stores
    assert all(loader.state_dict() == state for loader in first)
    assert state["legs"] == [[before, GLOBAL_BATCH // before, at]]
    second = dali(shards, after, **kwargs)
    for loader in second:
        loader.load_state_dict(state)
        loader.set_epoch(1)  # a trainer's loop does this; the loaded position is kept
    rest = [run(loader) for loader in second]
    for loader in first + second:
        loader.close()
    return taken, rest


@pytest.mark.parametrize("before,after", [(1, 2), (2, 3), (4, 2), (3, 1)])
def test_dali_resumes_on_another_world_size_exactly_once(shards, before, after):
    taken, rest = interrupted(shards, before, after, 1)
    assert len({len(r) for r in rest}) == 1, "ranks got different batch counts"
    keys = [k for part in taken + rest for batch_keys, _ in part for k in batch_keys]
    assert len(keys) == len(set(keys)) == 24  # 30 minus the tail of 6


@pytest.mark.parametrize("world,at,preset", [(1, 1, CENTRE), (2, 1, CENTRE), (1, 1, RANDOM),
                                            (2, 1, RANDOM)])
def test_dali_same_world_resume_gives_the_same_batches(shards, world, at, preset):
    """Same keys per batch as an uninterrupted run, and the same pixels: the draws are keyed by
    sample, not by what the loader ran before."""
    _, rest = interrupted(shards, world, world, at, preset=preset)
    uninterrupted = dali(shards, world, preset=preset)
    for loader, mine in zip(uninterrupted, rest):
        loader.set_epoch(1)
        reference = run(loader)[at:]
        assert [k for k, _ in reference] == [k for k, _ in mine] and mine
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(reference, mine))
        loader.close()


def test_dali_and_cpu_backends_deliver_the_same_batches(shards):
    for world in (1, 2):
        for cpu, mine in zip(loaders(shards, world, workers=0), dali(shards, world)):
            cpu.set_epoch(2)
            mine.set_epoch(2)
            assert [k for k, _ in run(cpu)] == [k for k, _ in run(mine)]
            cpu.close()
            mine.close()
