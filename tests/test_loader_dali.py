"""The DALI backend on the CPU (device_id=None): exact geometry, the per-sample operations against
their definitions, the loader contract, labels staying with images, and faults named by shard and
key."""
from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from helpers.shardsets import build_shards, labels_from_images, pack_arrays, rewrite_shard  # noqa: E402
from imaginet_shards.augment.dali_nodes import NO_FIELD  # noqa: E402
from imaginet_shards.augment.spec import Blur, Compress, Crop, Flip, Noise, OneOf, PadTo, Preset, Rot90  # noqa: E402
from imaginet_shards.errors import DaliSetupError, SampleError  # noqa: E402
from imaginet_shards.io.shardset import ShardIndex, load_manifest, open_shard_set  # noqa: E402
from imaginet_shards.loaders import LoaderConfig, make_loader  # noqa: E402
from imaginet_shards.loaders.cpu import CpuLoader  # noqa: E402
from imaginet_shards.loaders.dali import DaliLoader  # noqa: E402
from imaginet_shards.loaders.dali_pipeline import padded  # noqa: E402
from imaginet_shards.loaders.world import EpochSpec, batches_per_rank, rank_batch_sizes  # noqa: E402


def coordinate_image(height: int, width: int) -> np.ndarray:
    """R = column, G = row, B = 255: every pixel says where it came from (sides < 256)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols, rows, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def dali_batches(shards, preset: Preset, batch_size: int = 4, **config):
    """All batches of one epoch of a DALI loader (single rank, no shuffle unless asked)."""
    options = dict(preset=preset, batch_size=batch_size, rank=0, world_size=1, workers=2,
                   shuffle=False, drop_last=False)
    options.update(config)
    return list(DaliLoader(open_shard_set(str(shards)), LoaderConfig(**options)).batches())


def pixels(images: torch.Tensor) -> torch.Tensor:
    """[0,1] float CHW images (normalize=False presets) -> uint8 HWC."""
    return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


COORDINATE_SIZES = [(60, 130), (130, 60), (50, 70), (200, 240), (96, 96), (97, 150)]


@pytest.fixture(scope="module")
def coordinate_shards(tmp_path_factory):
    """PNG coordinate images smaller and larger than a 96 crop, in both directions."""
    return pack_arrays(tmp_path_factory.mktemp("coords"),
                       [(coordinate_image(h, w), "png") for h, w in COORDINATE_SIZES * 2],
                       max_count=5)


@pytest.fixture(scope="module")
def texture_shards(tmp_path_factory):
    """Eight copies of one smooth 90x120 textured PNG (its centre 64x64 crop is known)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((120, 90), Image.Resampling.BICUBIC))
    shards = pack_arrays(tmp_path_factory.mktemp("texture"), [(texture, "png")] * 8, max_count=4)
    return shards, torch.from_numpy(texture[13:77, 28:92].copy())


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("colour"), 30, max_count=7, seed=3)


def _window_of(image: np.ndarray, sizes: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(source size index, top, left) of the 96x96 window of a centred reflect-101 padded
    coordinate image that `image` is, found from its first row and column."""
    for number, (height, width) in enumerate(sizes):
        pad_h, pad_w = max(96 - height, 0), max(96 - width, 0)
        padded = cv2.copyMakeBorder(coordinate_image(height, width), pad_h // 2, pad_h - pad_h // 2,
                                    pad_w // 2, pad_w - pad_w // 2, cv2.BORDER_REFLECT_101)
        for top in range(padded.shape[0] - 95):
            for left in range(padded.shape[1] - 95):
                if np.array_equal(padded[top:top + 96, left:left + 96], image):
                    return number, top, left
    raise AssertionError("not a window of any padded source image")


def test_pad_and_random_crop_are_exact(coordinate_shards):
    """Windows of the centred reflect-101 padded images (PNG windows decoded by windows.py)."""
    preset = Preset("crop", 96, (PadTo(96), Crop(96, random=True)), normalize=False)
    found = []
    for batch in dali_batches(coordinate_shards, preset, batch_size=5):
        found += [_window_of(image.numpy(), COORDINATE_SIZES) for image in pixels(batch.images)]
    assert len(found) == 12 and {0, 1, 2} <= {n for n, _, _ in found}  # the padded ones
    assert max(top for _, top, _ in found) > 0 and max(left for _, _, left in found) > 0


def test_rot90_and_flip_match_torch(texture_shards):
    shards, crop = texture_shards
    preset = Preset("turn", 64, (PadTo(64), Crop(64, random=False), Rot90(1.0), Flip(1.0)),
                    normalize=False)
    seen = set()
    for batch in dali_batches(shards, preset, batch_size=8, seed=5):
        for image, quarters, mode in zip(pixels(batch.images), batch.decisions["2.Rot90"],
                                         batch.decisions["3.Flip"]):
            expected = torch.rot90(crop, int(quarters), dims=(0, 1))
            dims = {0: [1], 1: [0], 2: [0, 1]}[int(mode)]  # horizontal, vertical, both
            assert torch.equal(image, torch.flip(expected, dims))
            seen.add((int(quarters), int(mode)))
    assert {q for q, _ in seen} <= {0, 1, 2, 3} and len(seen) > 2


@pytest.mark.parametrize("option", [Blur(), Noise(), Compress()], ids=lambda o: type(o).__name__)
def test_degradations(texture_shards, option):
    shards, crop = texture_shards
    preset = Preset("degrade", 64, (PadTo(64), Crop(64, random=False), OneOf(1.0, (option,))),
                    normalize=False)
    for batch in dali_batches(shards, preset, batch_size=8, seed=2):
        assert (batch.decisions["2.OneOf"] == 0).all()
        for image in pixels(batch.images):
            difference = image.float() - crop.float()
            if isinstance(option, Blur):  # one of the kernels, as OpenCV's (sigma from the kernel)
                errors = [np.abs(image.numpy().astype(int) - cv2.GaussianBlur(crop.numpy(), (k, k), 0))
                          .max() for k in (3, 5, 7)]
                assert min(errors) <= 1 and difference.abs().max() > 2
            elif isinstance(option, Noise):  # std within sqrt of the variance range; truncated
                assert 1.5 < difference.std() < 3.5 and abs(difference.mean() + 0.5) < 0.3
            else:  # JPEG at quality 50-95: changed, but close
                assert 0 < difference.abs().mean() < 8


def test_contract_over_ranks(colour_shards):
    total = open_shard_set(str(colour_shards)).manifest.samples
    for world_size, drop_last in [(1, True), (3, True), (2, False)]:
        keys, counts = [], set()
        for rank in range(world_size):
            loader = make_loader(colour_shards, backend="dali", preset="train", batch_size=4,
                                 rank=rank, world_size=world_size, seed=1, workers=2,
                                 drop_last=drop_last, shuffle_buffer=8, device="cpu")
            batches = list(loader.batches())
            assert len(batches) == len(loader) == batches_per_rank(total, world_size, 4, drop_last)
            spec = EpochSpec(world_size, rank, 4, 1, 0, drop_last)
            assert [len(b.keys) for b in batches] == list(rank_batch_sizes(total, spec))
            for batch in batches:
                assert batch.images.dtype == torch.float32 and batch.labels.dtype == torch.int64
                assert batch.images.shape[1:] == (3, 96, 96) and batch.labels.shape[1:] == (4,)
            keys += [k for b in batches for k in b.keys]
            counts.add(len(batches))
        assert len(keys) == len(set(keys))  # never twice in an epoch, across ranks
        expected = total if not drop_last else total - total % (world_size * 4)
        assert len(keys) == expected and len(counts) == 1


def test_deterministic_and_reshuffled_each_epoch(colour_shards):
    def run(epoch):
        loader = make_loader(colour_shards, backend="dali", preset="train", batch_size=4,
                             rank=0, world_size=1, seed=7, workers=2, shuffle_buffer=8,
                             device="cpu")
        loader.set_epoch(epoch)
        batches = list(loader.batches())
        return [k for b in batches for k in b.keys], torch.cat([b.images for b in batches])

    first, again, other = run(0), run(0), run(1)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert first[0] != other[0]


def test_labels_follow_images(colour_shards):
    for rank in range(2):
        loader = make_loader(colour_shards, backend="dali", preset="calibration", batch_size=4,
                             rank=rank, world_size=2, seed=3, workers=2, device="cpu")
        for images, labels in loader:
            assert torch.equal(labels_from_images(images, loader.config.preset.mean,
                                                  loader.config.preset.std), labels)


def _drop_labels(key, members):
    return [(e, d) for e, d in members if not (key == "000000010" and e == "labels")]


def _garbage_image(key, members):
    return [(e, b"\xff\xd8\xff garbage" if key == "000000010" and e in ("png", "jpg") else d)
            for e, d in members]


def _truncate(tar):
    entry = load_manifest(str(tar.parent)).shards[1]
    image = ShardIndex(entry, tar.with_suffix(".idx").read_text()).samples[2][0]
    with open(tar, "r+b") as stream:
        stream.truncate(image.offset + image.size // 2)


def bad_huffman_jpeg() -> bytes:
    """A JPEG whose header and end marker are sound (the host checks pass) but whose Huffman table
    index is invalid: only a decoder rejects it."""
    ok, encoded = cv2.imencode(".jpg", np.full((40, 40, 3), 128, dtype=np.uint8))
    data = bytearray(encoded.tobytes())
    data[data.index(b"\xff\xc4") + 4] = 0x35  # table class 3: no such class
    return bytes(data)


def _bad_huffman(key, members):
    return [(e, bad_huffman_jpeg() if key == "000000010" and e in ("png", "jpg") else d)
            for e, d in members]


TRUNCATED = [f"0000000{n}" for n in range(10, 16)]  # the cut is in sample 10: 10..15 are lost


@pytest.mark.parametrize("inject,keys,message", [
    (_truncate, TRUNCATED, "truncated"),
    (lambda tar: rewrite_shard(tar, _drop_labels), ["000000010"], "missing .labels"),
    (lambda tar: rewrite_shard(tar, _garbage_image), ["000000010"], "undecodable JPEG"),
    (lambda tar: rewrite_shard(tar, _bad_huffman), ["000000010"], "undecodable JPEG.*DALI"),
], ids=["truncated", "missing-labels", "not-an-image", "decoder-rejects"])
def test_faults_name_shard_and_key(tmp_path_factory, inject, keys, message):
    """The first bad batch's bad sample that comes first in its shard, as the CPU backend."""
    pristine = build_shards(tmp_path_factory.mktemp("faults"), 16, max_count=8,
                            formats=("png", "jpg"))
    dest = pristine.parent / "broken"
    shutil.copytree(pristine, dest)
    inject(dest / "imaginet-000001.tar")
    loader = make_loader(dest, backend="dali", preset="eval", batch_size=3, rank=0, world_size=1,
                         workers=1, drop_last=False, device="cpu")
    with pytest.raises(SampleError, match=rf"imaginet-000001\.tar: sample ({'|'.join(keys)}): "
                                          rf".*{message}") as info:
        for _ in loader:
            pass
    assert info.value.shard == "imaginet-000001.tar" and info.value.key in keys


def test_unsupported_options_are_refused(colour_shards):
    with pytest.raises(NotImplementedError, match="on_error='skip'"):
        make_loader(colour_shards, backend="dali", batch_size=4, rank=0, world_size=1,
                    on_error="skip", device="cpu")
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        make_loader(colour_shards, backend="dali", batch_size=4, rank=0, world_size=1,
                    device="mps")


def test_per_sample_seeds_draw_the_same_in_every_epoch(colour_shards):
    """`social` draws from (seed, key) alone: each sample gets the same resize and compression in
    every epoch, and the epochs' batches are the same images."""
    loader = make_loader(colour_shards, backend="dali", preset="social", batch_size=4, rank=0,
                         world_size=1, device="cpu", shuffle=False, workers=1)
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        drawn, images = {}, {}
        for batch in loader.batches():
            assert batch.images.shape[1:] == (3, 256, 256)
            for i, key in enumerate(batch.keys):
                drawn[key] = {name: float(values[i]) for name, values in batch.decisions.items()}
                images[key] = batch.images[i]
        epochs.append((drawn, images))
    loader.close()
    (first, first_images), (second, second_images) = epochs
    assert first == second and len(first) == 28
    assert len({d["0.SquareResize.side"] for d in first.values()}) > 1
    compressed = [key for key, d in first.items() if d["1.OneOf"] == 0]
    assert compressed and len(compressed) < len(first)
    uncompressed = [key for key in first if key not in compressed]
    assert all(torch.equal(first_images[k], second_images[k]) for k in uncompressed)


def test_setup_error_at_construction_reads_nothing(colour_shards, tmp_path):
    """No GPU here: a CUDA pipeline fails to build in the constructor, before any shard is read
    (the tars are gone, so reading one would fail otherwise)."""
    dest = tmp_path / "indexes-only"
    shutil.copytree(colour_shards, dest)
    for tar in dest.glob("*.tar"):
        tar.unlink()
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: DALI may build a CUDA pipeline")
    with pytest.raises(DaliSetupError, match=r"DALI cannot run on cuda:0: .*CUDA") as info:
        make_loader(dest, backend="dali", batch_size=4, rank=0, world_size=1, device="cuda:0")
    assert info.value.device == "cuda:0" and not isinstance(info.value, ValueError)


def test_auto_falls_back_to_cpu_with_a_warning(colour_shards, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: DALI may build a CUDA pipeline")
    with caplog.at_level("WARNING", logger="imaginet_shards.loaders.factory"):
        loader = make_loader(colour_shards, backend="auto", batch_size=4, rank=0, world_size=1,
                             device="cuda:0", workers=0)
    assert isinstance(loader, CpuLoader)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "DALI cannot run on cuda:0" in warnings[0].getMessage()
    assert "using the CPU backend" in warnings[0].getMessage()
    loader.close()


def test_one_pipeline_for_every_epoch_even_after_an_early_stop(colour_shards, monkeypatch):
    """Built once, in the constructor; an epoch left early leaves nothing behind for the next;
    an iteration overtaken by a later one refuses to go on (it would get the other's batches)."""
    from imaginet_shards.loaders import dali as dali_module
    from imaginet_shards.loaders.dali_pipeline import SupersededError

    builds = []
    real_build = dali_module.build_pipeline
    monkeypatch.setattr(dali_module, "build_pipeline",
                        lambda *a, **k: builds.append(1) or real_build(*a, **k))
    preset = Preset("centre", 32, (Crop(32, random=False),))

    def loader():
        return make_loader(colour_shards, backend="dali", preset=preset, batch_size=4, rank=0,
                           world_size=1, seed=2, workers=1, device="cpu")

    reference = loader()
    reference.set_epoch(1)
    expected = [b.keys for b in reference.batches()]
    mine = loader()
    assert len(builds) == 2  # one per loader, before any iteration
    first = mine.batches()
    next(first)  # stop epoch 0 after one batch, with runs still in flight
    mine.set_epoch(1)
    assert [b.keys for b in mine.batches()] == expected
    overtaken = mine.batches()
    next(overtaken)
    later = mine.batches()
    next(later)
    with pytest.raises(SupersededError):
        next(overtaken)
    assert len(builds) == 2
    reference.close()
    mine.close()


def test_a_feed_stacks_samples_of_one_shape_and_repeats_the_last():
    """A short batch is filled with its last sample; samples of one shape are fed stacked (one
    array, which DALI takes without checking each sample in Python), others as a list."""
    windows = [np.zeros((2, 2, 3), np.uint8), np.ones((2, 2, 3), np.uint8)]
    fields = [NO_FIELD, np.ones((2, 2, 3), np.float32)]
    feed = padded(windows, [np.arange(4)] * 2, 4, draws=([np.array([1]), np.array([2])], fields))
    assert isinstance(feed.encoded, np.ndarray) and feed.encoded.shape == (4, 2, 2, 3)
    assert [int(window.max()) for window in feed.encoded] == [0, 1, 1, 1] and feed.real == 2
    assert isinstance(feed.labels, np.ndarray) and feed.labels.shape == (4, 4)
    assert isinstance(feed.draws[0], np.ndarray) and feed.draws[0].tolist() == [[1], [2], [2], [2]]
    assert isinstance(feed.draws[1], list) and [f.shape for f in feed.draws[1]] == [(1, 1, 3)] + [(2, 2, 3)] * 3
    encoded = padded([b"abc", b"de"], [np.arange(4)] * 2, 3).encoded
    assert isinstance(encoded, list) and [bytes(e) for e in encoded] == [b"abc", b"de", b"de"]


def test_feeds_are_prepared_off_the_iterating_thread(colour_shards, monkeypatch):
    """Reading, checking and drawing run on the loader's feeding thread, not on the thread that
    iterates (a training loop's): an iteration overtaken by a later one stops its own feeding
    thread only, and closing the loader stops the current one."""
    from imaginet_shards.loaders import dali_feed

    readers: list[str] = []
    real_read = dali_feed.read_batch

    def read(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return real_read(*args, **kwargs)
    monkeypatch.setattr(dali_feed, "read_batch", read)
    loader = make_loader(colour_shards, backend="dali", preset="train", batch_size=4, rank=0,
                         world_size=1, seed=2, workers=1, device="cpu")
    keys = [batch.keys for batch in loader.batches()]
    assert readers and set(readers) == {"imaginet-dali-feed"}
    overtaken = loader.batches()
    next(overtaken)
    later = loader.batches()
    first = next(later)
    del overtaken  # finalised while the later iteration runs, which it must leave undisturbed
    assert [first.keys] + [batch.keys for batch in later] == keys
    unfinished = loader.batches()
    next(unfinished)
    feeding = loader._ahead._thread  # this loader's: other tests' loaders may still be collected
    assert feeding.is_alive()
    loader.close()
    assert not feeding.is_alive()
