"""Backend parity: the DALI and CPU backends on the same shards.

- shapes, dtypes and value ranges are equal;
- `eval` outputs agree pixel for pixel: PNG and WebP exactly, JPEG within DECODER_TOLERANCE levels
  (both use libjpeg-turbo; measured here: 0 levels, also for DALI's ROI decode of the crop);
- under `train`, DALI executes exactly the CPU backend's draws (`decisions.draw_params` with the
  per-sample generators), whose rate of each perturbation (and of each option, quarter turn, flip
  mode) agrees with the spec within sampling error (4 sigma; tests/test_augment_reference.py
  compares them with the reference's histograms).
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from helpers.shardsets import pack_arrays  # noqa: E402
from imaginet_shards.augment.decisions import BlurOp, CompressOp, FlipOp, NoiseOp, RotOp, draw_params  # noqa: E402
from imaginet_shards.augment.spec import Crop, Flip, Noise, OneOf, PadTo, Preset, Rot90, get_preset  # noqa: E402
from imaginet_shards.io.shardset import load_index, open_shard_set, read_samples  # noqa: E402
from imaginet_shards.loaders import make_loader  # noqa: E402
from imaginet_shards.loaders.world import sample_rng  # noqa: E402

DECODER_TOLERANCE = {"jpg": 1, "png": 0, "webp": 0}  # 0-255 levels
KINDS = {CompressOp: 0, BlurOp: 1, NoiseOp: 2}  # the order of the train preset's OneOf options
EPOCHS = 8


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour structure plus grain: compresses like a photograph, not like noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=float)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory):
    """Each format at sizes that need padding (< 256) and odd centre-crop offsets."""
    rng = np.random.default_rng(1)
    arrays = [(photo_like(rng, h, w), fmt) for fmt in ("jpg", "png", "webp")
              for h, w in [(240, 301), (299, 250), (277, 331)]]
    return pack_arrays(tmp_path_factory.mktemp("eval"), arrays, max_count=4)


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """64 small images: cheap to draw many train decisions from."""
    rng = np.random.default_rng(2)
    arrays = [(photo_like(rng, 100 + i % 7, 110 + i % 5), ("jpg", "png", "webp")[i % 3])
              for i in range(64)]
    return pack_arrays(tmp_path_factory.mktemp("small"), arrays, max_count=16)


def epoch_batches(shards, backend: str, preset: str, epoch: int = 0, **options):
    loader = make_loader(shards, backend=backend, preset=preset, batch_size=8, rank=0,
                         world_size=1, seed=0, workers=2, device="cpu", **options)
    loader.set_epoch(epoch)
    return list(loader.batches())


def formats_and_sizes(shards) -> dict[str, tuple[str, int, int]]:
    """{key: (extension, height, width)} from the shards' JSON members."""
    shard_set, out = open_shard_set(str(shards)), {}
    for entry in shard_set.manifest.shards:
        for record in read_samples(shard_set, load_index(shard_set, entry), 0, entry.samples):
            meta = json.loads(record.meta)
            out[record.key] = (record.image_ext, meta["height"], meta["width"])
    return out


def test_eval_pixel_for_pixel(eval_shards):
    outputs = {}
    for backend in ("dali", "cpu"):
        batches = epoch_batches(eval_shards, backend, "eval", shuffle=False, drop_last=False)
        outputs[backend] = {k: (image, labels) for b in batches
                            for k, image, labels in zip(b.keys, b.images, b.labels)}
    assert outputs["dali"].keys() == outputs["cpu"].keys() and len(outputs["cpu"]) == 9
    std = torch.tensor(get_preset("eval").std).view(3, 1, 1) * 255
    worst = Counter()
    for key, (ext, _, _) in formats_and_sizes(eval_shards).items():
        (dali, dali_labels), (cpu, cpu_labels) = outputs["dali"][key], outputs["cpu"][key]
        assert dali.shape == cpu.shape == (3, 256, 256) and dali.dtype == cpu.dtype == torch.float32
        assert torch.equal(dali_labels, cpu_labels)
        levels = float(((dali - cpu) * std).abs().max())
        worst[ext] = max(worst[ext], levels)
        assert levels <= DECODER_TOLERANCE[ext] + 1e-3, f"{key} ({ext}) differs by {levels:.2f} levels"
    assert set(worst) == {"jpg", "png", "webp"}


@pytest.mark.parametrize("preset", [
    Preset("noisy", 256, (PadTo(256), Crop(256, random=True), OneOf(1.0, (Noise(),)), Rot90(0.5)),
           normalize=False),
    Preset("turned", 256, (PadTo(256), Crop(256, random=True), Rot90(0.5), Flip(0.5)),
           normalize=False),
], ids=lambda preset: preset.name)
def test_random_presets_pixel_for_pixel(eval_shards, preset):
    """The same draws, noise field included, give the same pixels on both backends (lossless
    formats exactly, JPEG within its decoders' tolerance)."""
    outputs = {}
    for backend in ("dali", "cpu"):
        batches = epoch_batches(eval_shards, backend, preset, epoch=3, drop_last=False)
        outputs[backend] = {k: image for b in batches for k, image in zip(b.keys, b.images)}
    assert outputs["dali"].keys() == outputs["cpu"].keys() and len(outputs["cpu"]) == 9
    for key, (ext, _, _) in formats_and_sizes(eval_shards).items():
        levels = float(((outputs["dali"][key] - outputs["cpu"][key]) * 255).abs().max())
        assert levels <= DECODER_TOLERANCE[ext] + 1e-3, f"{key} ({ext}) differs by {levels:.2f} levels"


def test_train_shapes_dtypes_ranges(small_shards):
    preset = get_preset("train")
    low = [(0 - m) / s for m, s in zip(preset.mean, preset.std)]
    high = [(1 - m) / s for m, s in zip(preset.mean, preset.std)]
    for backend in ("dali", "cpu"):
        batches = epoch_batches(small_shards, backend, "train")
        assert len(batches) == 8
        for batch in batches:
            assert batch.images.shape == (8, 3, 96, 96) and batch.images.dtype == torch.float32
            assert batch.labels.shape == (8, 4) and batch.labels.dtype == torch.int64
            for channel in range(3):
                values = batch.images[:, channel]
                assert low[channel] - 1e-5 <= values.min() and values.max() <= high[channel] + 1e-5


def _within(count: int, total: int, p: float) -> bool:
    return abs(count / total - p) <= 4 * np.sqrt(p * (1 - p) / total) + 1e-9


def _cpu_decisions(shards, epochs: int) -> list[dict[str, int]]:
    """The CPU backend's train decisions (`draw_params` with its per-sample generators) for the
    samples its loader yields (all of them: 64 samples, batches of 8), `epochs` times."""
    preset, sizes, out = get_preset("train"), formats_and_sizes(shards), []
    keys = [k for batch in epoch_batches(shards, "cpu", "train") for k in batch.keys]
    assert sorted(keys) == sorted(sizes)
    for epoch in range(epochs):
        for key in keys:
            _, height, width = sizes[key]
            ops = draw_params(preset, sample_rng(0, key, epoch), height, width)
            rot = next((op.quarters for op in ops if isinstance(op, RotOp)), 0)
            flip = next(({(True, False): 0, (False, True): 1, (True, True): 2}[
                (op.horizontal, op.vertical)] for op in ops if isinstance(op, FlipOp)), -1)
            degrade = next((KINDS[type(op)] for op in ops if type(op) in KINDS), -1)
            out.append({"2.OneOf": degrade, "3.Rot90": rot, "4.Flip": flip})
    return out


def test_dali_executes_the_cpu_backends_draws(small_shards):
    """Every value DALI's graph executed for a sample is the CPU backend's draw for it, over
    epochs of one loader, whatever the batch (DALI's generators play no part)."""
    preset, sizes = get_preset("train"), formats_and_sizes(small_shards)
    loader = make_loader(small_shards, backend="dali", preset="train", batch_size=8, rank=0,
                         world_size=1, seed=0, workers=2, device="cpu")
    seen: Counter[str] = Counter()
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        for batch in loader.batches():
            for i, key in enumerate(batch.keys):
                _, height, width = sizes[key]
                drawn: dict[str, float] = {}
                draw_params(preset, sample_rng(0, key, epoch), height, width, drawn)
                executed = {name: float(values[i]) for name, values in batch.decisions.items()}
                assert executed == pytest.approx({n: drawn.get(n, 0) for n in executed}), key
                seen.update(name for name in drawn if name in executed)
    loader.close()
    assert sum(seen.values()) > 0 and {"1.Crop.top", "2.OneOf", "3.Rot90", "4.Flip",
                                       "2.OneOf.0.quality", "2.OneOf.1.kernel"} <= set(seen)


def test_train_perturbation_rates(small_shards):
    """The rates of the draws both backends execute (see the test above)."""
    spec = get_preset("train")
    one_of, rot, flip = spec.steps[2], spec.steps[3], spec.steps[4]
    decisions = _cpu_decisions(small_shards, EPOCHS)
    n = len(decisions)
    assert n >= 400
    # a Rot90 that fires turns by 0 a quarter of the time (the reference's law)
    for name, p, options in (("2.OneOf", one_of.p, 3), ("3.Rot90", 0.75 * rot.p, 3),
                             ("4.Flip", flip.p, 3)):
        none = -1 if name != "3.Rot90" else 0
        values = Counter(d[name] for d in decisions)
        applied = n - values[none]
        assert _within(applied, n, p), f"{name}: applied {applied}/{n}, spec p={p}"
        for option in set(values) - {none}:
            assert _within(values[option], applied, 1 / options), \
                f"{name}: option {option} {values[option]}/{applied}"
        assert len(set(values) - {none}) == options
