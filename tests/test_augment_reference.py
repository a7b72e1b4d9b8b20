"""Our presets against the reference's own albumentations 1.3.1 transforms (tests/helpers/reference.py).

- decisions: for each preset, 20,000 samples' draws from `decisions.draw_params` and from the
  reference pipelines, on the same image sizes, histogrammed per decision (branch, degradation,
  format, quality, kernel, noise variance, rotation, flip, crop position, crop side, resized-crop
  area and aspect): chi-square (categories) or Kolmogorov-Smirnov (numbers), fixed seeds, p > ALPHA;
- pixels: each CPU operation at fixed parameters against the albumentations transform that the
  reference runs; all are exact (0 levels), the CPU backend calling the same OpenCV functions.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chi2_contingency, ks_2samp

from helpers import reference as ref
from imaginet_shards.augment.cpu import apply_ops, augment
from imaginet_shards.augment.decisions import (
    BlurOp,
    CompressOp,
    CropOp,
    FlipOp,
    NoiseOp,
    Op,
    PadOp,
    ResizeOp,
    RotOp,
    cut_window,
    draw_params,
    image_size,
    window_steps,
)
from imaginet_shards.augment.spec import (
    Blur,
    Compress,
    Crop,
    OneOf,
    PadTo,
    Preset,
    ResizedCrop,
    Rot90,
    SquareResize,
    Step,
    get_preset,
)
from imaginet_shards.codecs.windows import WindowDecoder, reflect_101

A = ref.A
DRAWS = 20_000
ALPHA = 1e-4
# below, at and above the crop sizes (96, 160, 256), non-square, and above the social cap (1000)
SIZES = [(60, 90), (96, 96), (120, 300), (257, 190), (384, 512), (1100, 1300)]
FLIPS = {0: "v", 1: "h", -1: "hv"}

Features = dict[str, object]


# -- decisions as comparable features ------------------------------------------------------------

def _degradation_features(applied: list[ref.Applied]) -> Features:
    for a in applied:
        if a.name == "ImageCompression":
            kind = "webp" if a.params["image_type"] == ".webp" else "jpeg"
            return {"degrade": kind, "quality": a.params["quality"]}
        if a.name == "GaussianBlur":
            return {"degrade": "blur", "kernel": a.params["ksize"]}
        if a.name == "GaussNoise":
            gauss = a.params["gauss"]
            assert gauss.size == (a.height, a.width, 3) and gauss.loc == 0  # per channel
            return {"degrade": "noise", "variance": gauss.scale ** 2}
    return {"degrade": "none"}


def _turn_features(applied: list[ref.Applied]) -> Features:
    factor = next((a.params["factor"] for a in applied if a.name == "RandomRotate90"), 0)
    flip = next((FLIPS[a.params["d"]] for a in applied if a.name == "Flip"), "none")
    return {"rot": factor, "flip": flip}


def _crop_top(a: ref.Applied) -> float | None:
    """The reference RandomCrop's top row as a fraction of its range (None: no freedom)."""
    free = a.height - a.transform.height
    return int((free + 1) * a.params["h_start"]) / free if free else None


def ref_train(applied: list[ref.Applied]) -> Features:
    crops = [a for a in applied if a.name == "RandomCrop"]
    out: Features = {"resize": "none", "top": _crop_top(crops[-1])}
    resize = next((a for a in applied if a.name == "Resize"), None)
    if resize is not None:
        out["resize"] = {2: "cubic", 4: "lanczos4"}[resize.transform.interpolation]
        out["side"] = crops[0].transform.height
    return {**out, **_degradation_features(applied), **_turn_features(applied)}


def ref_calibration(applied: list[ref.Applied]) -> Features:
    names = [a.name for a in applied]
    out: Features = {"branch": "none", **_turn_features(applied)}
    if "RandomResizedCrop" in names:
        crop = applied[names.index("RandomResizedCrop")]
        h, w = crop.params["crop_height"], crop.params["crop_width"]
        out.update(branch="resized", area=h * w / (crop.height * crop.width), aspect=w / h)
    elif names.count("RandomCrop") == 2:
        out["branch"] = "cropped"
    return {**out, **_degradation_features(applied)}


def ref_social(applied: list[ref.Applied]) -> Features:
    crop = next(a for a in applied if a.name == "RandomCrop")
    return {"side": crop.transform.height, "top": _crop_top(crop), **_degradation_features(applied)}


def _our_degradation(ops: tuple[Op, ...]) -> Features:
    for op in ops:
        if isinstance(op, CompressOp):
            return {"degrade": op.format, "quality": op.quality}
        if isinstance(op, BlurOp):
            return {"degrade": "blur", "kernel": op.kernel}
        if isinstance(op, NoiseOp):
            return {"degrade": "noise", "variance": op.variance}
    return {"degrade": "none"}


def _our_turns(ops: tuple[Op, ...]) -> Features:
    rot = next((op.quarters for op in ops if isinstance(op, RotOp)), 0)
    flip = next(({(True, False): "h", (False, True): "v", (True, True): "hv"}[
        (op.horizontal, op.vertical)] for op in ops if isinstance(op, FlipOp)), "none")
    return {"rot": rot, "flip": flip}


def _shapes(ops: tuple[Op, ...], height: int, width: int) -> list[tuple[int, int]]:
    """The image's (height, width) before each op."""
    return [image_size(ops[:number], height, width) for number in range(len(ops))]


def _our_crops(ops: tuple[Op, ...], height: int, width: int) -> list[tuple[CropOp, int, int]]:
    return [(op, h, w) for op, (h, w) in zip(ops, _shapes(ops, height, width))
            if isinstance(op, CropOp)]


def _our_top(crop: CropOp, height: int) -> float | None:
    return crop.top / (height - crop.height) if height > crop.height else None


def our_train(ops: tuple[Op, ...], height: int, width: int) -> Features:
    crops = _our_crops(ops, height, width)
    out: Features = {"resize": "none", "top": _our_top(crops[-1][0], crops[-1][1])}
    resize = next((op for op in ops if isinstance(op, ResizeOp)), None)
    if resize is not None:
        out.update(resize=resize.interpolation, side=crops[0][0].height)
    return {**out, **_our_degradation(ops), **_our_turns(ops)}


def our_calibration(ops: tuple[Op, ...], height: int, width: int) -> Features:
    crops = _our_crops(ops, height, width)
    out: Features = {"branch": "none", **_our_turns(ops)}
    if any(isinstance(op, ResizeOp) for op in ops):
        crop, h_in, w_in = crops[0]
        out.update(branch="resized", area=crop.height * crop.width / (h_in * w_in),
                   aspect=crop.width / crop.height)
    elif len(crops) == 2:
        out["branch"] = "cropped"
    return {**out, **_our_degradation(ops)}


def our_social(ops: tuple[Op, ...], height: int, width: int) -> Features:
    crop, h_in, _ = _our_crops(ops, height, width)[0]
    return {"side": crop.height, "top": _our_top(crop, h_in), **_our_degradation(ops)}


# -- comparing histograms ------------------------------------------------------------------------

def _ours(preset: Preset, features: Callable, seed: int) -> list[Features]:
    rng = np.random.default_rng(seed)
    return [features(draw_params(preset, rng, *SIZES[i % len(SIZES)]), *SIZES[i % len(SIZES)])
            for i in range(DRAWS)]


def _reference(pipeline: Callable, features: Callable, seed: int) -> list[Features]:
    return [features(applied) for _, applied in ref.draw(pipeline, SIZES, DRAWS, seed)]


CATEGORIES = {"resize", "degrade", "kernel", "quality", "rot", "flip", "branch"}
NUMBERS = {"side", "top", "variance", "area", "aspect"}


def compare(ours: list[Features], theirs: list[Features]) -> dict[str, float]:
    """{feature: p-value} of each feature's two-sample test (chi-square for categories over the
    samples that have the feature, Kolmogorov-Smirnov for numbers)."""
    names = {k for f in ours + theirs for k in f}
    assert names <= CATEGORIES | NUMBERS, names - CATEGORIES - NUMBERS
    out = {}
    for name in sorted(names):
        a = [f[name] for f in ours if f.get(name) is not None]
        b = [f[name] for f in theirs if f.get(name) is not None]
        assert len(a) > 100 and len(b) > 100, f"{name}: only {len(a)} / {len(b)} samples"
        if name in NUMBERS:
            out[name] = float(ks_2samp(a, b).pvalue)
            continue
        counts_a, counts_b = Counter(a), Counter(b)
        keys = sorted(set(counts_a) | set(counts_b), key=str)
        if len(keys) == 1:
            out[name] = 1.0
            continue
        table = np.array([[counts_a[k] for k in keys], [counts_b[k] for k in keys]])
        out[name] = float(chi2_contingency(table).pvalue)
    return out


PRESET_CASES = {
    "train": (lambda: get_preset("train"), ref.train, our_train, ref_train),
    "train+resize": (lambda: get_preset("train", random_resize=True),
                     lambda image: ref.train(image, resize=True), our_train, ref_train),
    "calibration": (lambda: get_preset("calibration"), ref.calibration, our_calibration,
                    ref_calibration),
    "social": (lambda: get_preset("social"), ref.social, our_social, ref_social),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PRESET_CASES))
def test_decisions_match_reference(case):
    preset, pipeline, ours, theirs = PRESET_CASES[case]
    p_values = compare(_ours(preset(), ours, seed=1), _reference(pipeline, theirs, seed=2))
    failed = {name: p for name, p in p_values.items() if p <= ALPHA}
    assert not failed, f"{case}: distributions differ from the reference's: {failed}"


# -- pixels ----------------------------------------------------------------------------------------

def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour structure plus grain (compresses and resizes like a photograph)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=float)
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def _apply(image: np.ndarray, op: Op) -> np.ndarray:
    """Our CPU operation on an HWC array."""
    return apply_ops(torch.from_numpy(image).permute(2, 0, 1), (op,)).permute(1, 2, 0).numpy()


def _levels(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("size", [(60, 90), (200, 300), (300, 200), (20, 7), (1, 5)])
def test_pad_is_centred_reflect_101(size):
    image = _image(*size)
    theirs = A.PadIfNeeded(256, 256).apply_with_params({"rows": size[0], "cols": size[1]},
                                                       image=image)["image"]
    ours = _apply(image, PadOp(max(size[0], 256), max(size[1], 256)))
    assert _levels(ours, theirs) == 0


@pytest.mark.parametrize("steps, count", [
    ((PadTo(96), Crop(96, random=True), Rot90(0.5)), 2),
    ((PadTo(80), Crop(80, random=True), Crop(40, random=True), PadTo(60), Crop(50, False)), 3),
    ((Crop(40, random=True), ResizedCrop(32), Crop(16, random=True)), 2),
    ((PadTo(96), Rot90(0.5)), 0),
    ((SquareResize(p=0.5, min_side=160, size=256), PadTo(96), Crop(96, random=True)), 0),
    ((Rot90(0.5), Crop(10, random=True)), 0),
])
def test_window_steps_are_the_leading_pads_and_crops(steps: tuple[Step, ...], count: int):
    assert window_steps(steps) == count


WINDOWED = {
    "train": get_preset("train"),
    "eval": get_preset("eval"),
    "two crops": Preset("two crops", 40, (PadTo(80), Crop(80, random=True), Crop(40, random=True))),
    "resized": Preset("resized", 32, (Crop(40, random=True), ResizedCrop(32), Rot90(1.0))),
}


@pytest.mark.parametrize("name", sorted(WINDOWED))
def test_the_leading_window_holds_the_pixels_its_operations_make(name: str):
    """`cut_window` of the operations of a preset's `window_steps` (their count from `marks`) is
    the window those operations cut, mirrored (reflect-101) where they pad: what a loader decodes
    instead of the whole image."""
    preset, rng = WINDOWED[name], np.random.default_rng(11)
    count = window_steps(preset.steps)
    assert count > 0
    for _ in range(40):
        height, width = int(rng.integers(41, 400)), int(rng.integers(41, 400))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        marks: list[int] = []
        ops = draw_params(preset, rng, height, width, marks=marks)
        assert len(marks) == len(preset.steps) and marks[-1] == len(ops)
        window = cut_window(ops[:marks[count - 1]], height, width)
        cut = pixels[np.ix_(reflect_101(window.top, window.height, height),
                            reflect_101(window.left, window.width, width))]
        geometry = [op for op in ops[:marks[count - 1]] if not isinstance(op, ResizeOp)]
        made = apply_ops(torch.from_numpy(pixels).permute(2, 0, 1), tuple(geometry))
        np.testing.assert_array_equal(cut, made.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="does not cut a window"):
        cut_window((CropOp(0, 0, 4, 4), PadOp(8, 8)), 10, 10)


@pytest.mark.parametrize("interpolation, code", [("linear", 1), ("cubic", 2), ("lanczos4", 4)])
@pytest.mark.parametrize("side", [160, 300, 731])
def test_resize_is_opencv_without_antialiasing(interpolation, code, side):
    image = _image(side, side, seed=side)
    theirs = A.Resize(256, 256, interpolation=code).apply(image, interpolation=code)
    assert _levels(_apply(image, ResizeOp(256, interpolation)), theirs) == 0  # measured: 0


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_blur_at_each_kernel(kernel):
    image = _image(80, 100, seed=kernel)
    theirs = A.GaussianBlur(blur_limit=(kernel, kernel)).apply(image, ksize=kernel, sigma=0)
    assert _levels(_apply(image, BlurOp(kernel)), theirs) == 0


@pytest.mark.parametrize("quarters", [1, 2, 3])
def test_rotation(quarters):
    image = _image(50, 70)
    assert _levels(_apply(image, RotOp(quarters)), A.RandomRotate90().apply(image, factor=quarters)) == 0


@pytest.mark.parametrize("code, horizontal, vertical", [(1, True, False), (0, False, True),
                                                         (-1, True, True)])
def test_flip(code, horizontal, vertical):
    image = _image(50, 70)
    assert _levels(_apply(image, FlipOp(horizontal, vertical)), A.Flip().apply(image, d=code)) == 0


@pytest.mark.parametrize("fmt, quality", [("jpeg", 50), ("jpeg", 75), ("jpeg", 95),
                                          ("webp", 60), ("webp", 100)])
def test_compression_as_opencv_on_rgb(fmt, quality):
    image = _image(96, 128, seed=quality)
    kind = ref.WEBP if fmt == "webp" else ref.JPEG
    theirs = A.ImageCompression(quality, quality, compression_type=kind).apply(
        image, quality=quality, image_type=".webp" if fmt == "webp" else ".jpg")
    ours = _apply(image, CompressOp(fmt, quality))
    assert _levels(ours, theirs) == 0  # measured: 0 (the same OpenCV calls)
    assert _levels(ours, image) > 0


def test_noise_is_per_channel_added_then_truncated():
    """The same law as GaussNoise: per-pixel-and-channel N(0, var), added, clipped, truncated."""
    image = np.full((128, 128, 3), 100, np.uint8)
    image[:64] = 253  # clipping at 255 shows in the top half
    variance = 9.0
    noise = A.GaussNoise(var_limit=(variance, variance), p=1.0)
    np.random.seed(0)
    theirs = noise(image=image)["image"]
    ours = _apply(image, NoiseOp(variance, seed=0))
    for rows in (slice(0, 64), slice(64, None)):
        a = ours[rows].astype(int) - image[rows]
        b = theirs[rows].astype(int) - image[rows]
        assert ks_2samp(a.ravel(), b.ravel()).pvalue > ALPHA
    assert abs((ours[64:].astype(float) - 100).mean() + 0.5) < 0.05  # truncation: mean -0.5
    assert not np.array_equal(ours[..., 0], ours[..., 1])  # per channel


def test_noise_field_is_fixed_by_torchs_generator():
    """The seed fixes the noise field: torch's normal generator drawn in [3, H, W] order, scaled,
    added in float32 (perturbed sets and parity runs stay as they were made)."""
    image = np.random.default_rng(4).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    field = torch.randn((3, 37, 29), generator=torch.Generator().manual_seed(123)) * math.sqrt(7.5)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() + field).clamp(0, 255).to(torch.uint8)
    assert np.array_equal(_apply(image, NoiseOp(7.5, seed=123)), expected.permute(1, 2, 0).numpy())


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(image).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("size", SIZES)
def test_eval_preset_pixels_through_window_decoding(fmt, size):
    """`eval` from encoded bytes (windowed decoding where the crop allows) equals the reference's
    transform of the decoded image, padding included."""
    image = _image(*size, seed=size[0])
    ours = augment(_encoded(image, fmt), get_preset("eval"), np.random.default_rng(0))
    assert _levels(ours.permute(1, 2, 0).numpy(), ref.evaluation(image)) == 0


def test_calibration_ops_replay_the_reference_geometry():
    """A resized crop taken from a padded image: our ops on the pixels equal albumentations'
    PadIfNeeded + crop + INTER_LINEAR resize of the same window."""
    image = _image(120, 300)
    ops = (PadOp(256, 300), CropOp(10, 20, 150, 180), ResizeOp(256, "linear"))
    padded = A.PadIfNeeded(256, 256).apply_with_params({"rows": 120, "cols": 300}, image=image)["image"]
    theirs = A.Resize(256, 256).apply(padded[10:160, 20:200], interpolation=1)
    ours = apply_ops(torch.from_numpy(image).permute(2, 0, 1), ops).permute(1, 2, 0).numpy()
    assert _levels(ours, theirs) == 0


# -- the DALI backend's pixels against the reference's ----------------------------------------------

def _dali_pixels(preset: Preset, *images: np.ndarray) -> list[np.ndarray]:
    """`preset` (normalize=False) through the DALI graph on the CPU, from PNGs of `images`."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from helpers.dali_draws import HostDraws

    data = [np.frombuffer(_encoded(image, "PNG"), np.uint8) for image in images]
    windows = WindowDecoder(1)  # PNG windows through windows.py, as the loader decodes them
    host = HostDraws(preset, lambda _: [image.shape[:2] for image in images])

    @pipeline_def(batch_size=len(data), num_threads=1, device_id=None, enable_conditionals=True,
                  seed=1)
    def pipe():
        return host.graph(fn.external_source(source=lambda: data, batch=True), windows=windows)

    try:
        pipeline = pipe()
        pipeline.build()
        out = pipeline.run()[0]
    finally:
        windows.close()
    return [(np.array(out[i]).transpose(1, 2, 0) * 255).round().astype(np.uint8)
            for i in range(len(data))]


def test_dali_pads_like_the_reference():
    """Centred reflect-101 padding through decoded windows (PNG through windows.py), on one or
    both axes, several mirrorings deep for 20x7."""
    images = [_image(*size, seed=size[1]) for size in [(60, 90), (120, 300), (257, 190), (20, 7)]]
    preset = Preset("eval", 256, get_preset("eval").steps, normalize=False)
    for ours, image in zip(_dali_pixels(preset, *images), images):
        assert _levels(ours, ref.evaluation(image)) == 0


# measured maximum differences from OpenCV (0-255 levels) on grainy test images: DALI's linear
# resampling and Gaussian blur round differently; its cubic kernel is not OpenCV's (a = -0.75) and
# it has Lanczos-3, not Lanczos-4
DALI_RESIZE_LEVELS = {"linear": 1, "cubic": 4, "lanczos4": 3}


@pytest.mark.parametrize("interpolation", sorted(DALI_RESIZE_LEVELS))
@pytest.mark.parametrize("side", [160, 731])
def test_dali_resize_near_opencv(interpolation, side):
    image = _image(side, side, seed=side)
    preset = Preset("resize", 256, (SquareResize(1.0, side, 256, side, interpolation),),
                    normalize=False)
    code = {"linear": 1, "cubic": 2, "lanczos4": 4}[interpolation]
    theirs = A.Resize(256, 256, interpolation=code).apply(image, interpolation=code)
    assert _levels(_dali_pixels(preset, image)[0], theirs) <= DALI_RESIZE_LEVELS[interpolation]


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_dali_blur_near_opencv(kernel):
    image = _image(80, 100, seed=kernel)
    preset = Preset("blur", 64, (Crop(64, False), OneOf(1.0, (Blur((kernel, kernel)),))),
                    normalize=False)
    theirs = A.GaussianBlur(blur_limit=(kernel, kernel)).apply(image[8:72, 18:82], ksize=kernel)
    assert _levels(_dali_pixels(preset, image)[0], theirs) <= 1  # measured: 1


@pytest.mark.parametrize("quality", [50, 95])
def test_dali_jpeg_is_the_reference_jpeg(quality):
    """JPEG damage with red and blue swapped, as OpenCV's encoder sees the reference's RGB."""
    image = _image(96, 128, seed=quality)
    preset = Preset("jpeg", 96, (Crop(96, False), OneOf(1.0, (Compress((quality, quality), 0.0),))),
                    normalize=False)
    theirs = A.ImageCompression(quality, quality).apply(image[:, 16:112], quality=quality,
                                                         image_type=".jpg")
    assert _levels(_dali_pixels(preset, image)[0], theirs) == 0  # measured: 0
