"""The CPU backend against the loader contract (docs/architecture.md, "The loader contract"), ranks run in-process, plus torchrun."""
from __future__ import annotations

import gc
import textwrap
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.shardsets import build_shards
from helpers.torchrun import run_torchrun
from imaginet_shards.augment.cpu import augment, encode, normalize
from imaginet_shards.augment.spec import PRESETS, get_preset
from imaginet_shards.loaders import make_loader
from imaginet_shards.loaders.world import batches_per_rank, dropped_samples

COUNT = 26  # shards of 7, 7, 7, 5


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("cpu"), COUNT, max_count=7)


def run_epoch(shards: Path, **kwargs) -> tuple[list[list[str]], list[torch.Tensor], object]:
    """(keys per batch, images per batch, loader) of one epoch of a CPU loader."""
    options = dict(backend="cpu", preset="train", batch_size=4, rank=0, world_size=1, workers=2)
    loader = make_loader(shards, **{**options, **kwargs})
    keys, images = [], []
    for batch in loader.batches():
        keys.append(batch.keys)
        images.append(batch.images)
    return keys, images, loader


@pytest.mark.parametrize("world_size,drop_last", [(1, True), (2, True), (3, True), (2, False),
                                                  (3, False)])
def test_ranks_cover_the_epoch_once_with_equal_batch_counts(shards, world_size, drop_last):
    seen = []
    for rank in range(world_size):
        keys, _, loader = run_epoch(shards, rank=rank, world_size=world_size, drop_last=drop_last,
                                    preset="eval", workers=2)
        assert len(keys) == len(loader) == batches_per_rank(COUNT, world_size, 4, drop_last)
        seen += [k for batch in keys for k in batch]
    assert len(seen) == len(set(seen)), "a sample was read twice in one epoch"
    assert len(seen) == COUNT - dropped_samples(COUNT, world_size, 4, drop_last)


def test_seed_fixes_order_and_set_epoch_reshuffles(shards):
    keys_a, images_a, loader = run_epoch(shards, seed=5)
    keys_b, images_b, _ = run_epoch(shards, seed=5)
    assert keys_a == keys_b
    assert all(torch.equal(a, b) for a, b in zip(images_a, images_b))
    loader.set_epoch(1)  # persistent workers must follow
    keys_next = [batch.keys for batch in loader.batches()]
    assert keys_next != keys_a
    assert keys_next == run_epoch(shards, seed=5, epoch=1)[0]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_perturbations_do_not_depend_on_worker_count(shards):
    def by_key(keys, images):
        return {k: img for batch_keys, batch in zip(keys, images) for k, img in zip(batch_keys, batch)}

    keys0, images0, _ = run_epoch(shards, workers=0, seed=1)
    keys3, images3, _ = run_epoch(shards, workers=3, seed=1)
    a, b = by_key(keys0, images0), by_key(keys3, images3)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 2])
def test_output_contract(shards, workers):
    loader = make_loader(shards, backend="cpu", preset="train", batch_size=5, rank=0, world_size=1,
                         workers=workers)
    with loader:
        images, labels = next(iter(loader))
    assert images.shape == (5, 3, 96, 96) and images.dtype == torch.float32
    assert labels.shape == (5, 4) and labels.dtype == torch.int64
    assert -2.2 < float(images.min()) and float(images.max()) < 2.7  # ImageNet-normalised
    assert loader.skipped == ()


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("standardise", [True, False])
def test_cpu_normalize_rounds_as_torch_does(name, standardise):
    """The CPU path (numpy) gives torch's float32 values bit for bit, for every uint8 value in
    every channel (at positions that reach vectorised loops and their tails)."""
    preset = replace(get_preset(name), normalize=standardise)
    images = torch.arange(256, dtype=torch.uint8).repeat(2 * 3 * 37 * 41 // 256 + 1)
    images = images[:2 * 3 * 37 * 41].view(2, 3, 37, 41).flip(3)
    expected = images.float().div_(255)
    if standardise:
        expected = expected.sub_(torch.tensor(preset.mean).view(1, 3, 1, 1))
        expected = expected.div_(torch.tensor(preset.std).view(1, 3, 1, 1))
    out = normalize(images, preset)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert torch.equal(out, expected)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_gives_its_size_for_any_image_size(preset):
    spec = get_preset(preset)
    for height, width in [(40, 30), (96, 96), (120, 300), (1100, 257)]:
        data = encode(torch.randint(0, 256, (3, height, width), dtype=torch.uint8), "png")
        for seed in range(4):
            out = augment(data, spec, np.random.default_rng(seed))
            assert out.shape == (3, spec.size, spec.size) and out.dtype == torch.uint8


def test_bad_arguments(shards):
    with pytest.raises(ValueError, match="backend"):
        make_loader(shards, backend="gpu", batch_size=4)
    with pytest.raises(ValueError, match="on_error"):
        make_loader(shards, backend="cpu", batch_size=4, on_error="ignore", rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        make_loader(shards, backend="cpu", batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no batch"):
        make_loader(shards, backend="cpu", batch_size=COUNT, rank=0, world_size=2)
    with pytest.raises(ValueError, match="unknown preset"):
        make_loader(shards, backend="cpu", preset="nope", batch_size=4, rank=0, world_size=1)


TORCHRUN_SCRIPT = """
import sys
from pathlib import Path

import torch.distributed as dist
from imaginet_shards.loaders import make_loader

dist.init_process_group("gloo")
loader = make_loader(sys.argv[1], backend="cpu", preset="train", batch_size=3, workers=1,
                     drop_last=False)
count = sum(1 for _ in loader)
counts = [None] * dist.get_world_size()
dist.all_gather_object(counts, count)
dist.barrier()
Path(sys.argv[2], f"rank{dist.get_rank()}.txt").write_text(f"{count} {len(loader)} {counts}")
dist.destroy_process_group()
"""


@pytest.mark.timeout(180)
def test_torchrun_two_ranks_finish_with_equal_batch_counts(shards, tmp_path):
    script = tmp_path / "epoch.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    output = run_torchrun([str(script), str(shards), str(tmp_path)], timeout=120)
    expected = batches_per_rank(COUNT, 2, 3, drop_last=False)
    for rank in (0, 1):  # batches seen, len(), and every rank's count as gathered by this rank
        reported = (tmp_path / f"rank{rank}.txt").read_text()
        assert reported == f"{expected} {expected} {[expected, expected]}", output[-2000:]


def test_auto_takes_the_cpu_backend_quietly_for_cpu_only_options(shards, recwarn):
    """`on_error="skip"` is a CPU-backend feature, not a broken DALI: no warning."""
    loader = make_loader(shards, backend="auto", preset="eval", batch_size=4, rank=0, world_size=1,
                         device="cpu", workers=0, on_error="skip")
    assert type(loader).__name__ == "CpuLoader"
    assert not [w for w in recwarn if "unusable" in str(w.message)]


def test_the_parent_collects_its_garbage_before_the_workers_fork(shards):
    """Cyclic garbage (a DALI pipeline from a loader that failed, say) is finalised in the
    parent before its DataLoader workers fork, not in a worker, and only before that one fork."""
    class Node:
        pass

    def garbage() -> weakref.ref:
        node = Node()
        node.cycle = node
        return weakref.ref(node)

    loader = make_loader(shards, backend="cpu", preset="eval", batch_size=8, rank=0, world_size=1,
                         workers=1, device="cpu")
    gc.disable()
    try:
        first = garbage()
        assert first() is not None
        next(iter(loader))
        assert first() is None
        later = garbage()
        loader.set_epoch(1)
        next(iter(loader))  # the workers persist: nothing forks, nothing is collected
        assert later() is not None
    finally:
        gc.enable()
        loader.close()
