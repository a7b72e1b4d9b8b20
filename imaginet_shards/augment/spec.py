"""The one perturbation spec (docs/architecture.md, "Perturbations"): presets as data that both loader
backends interpret.

A preset is a tuple of steps applied in order to a decoded HWC uint8 image, followed by ImageNet
normalisation. Probabilities and ranges are per sample. They are those of the ImagiNet reference
code's albumentations 1.3.1 / OpenCV transforms as that version executes them (e.g. its `OneOf`
normalises its children's p, its `RandomRotate90` may turn by 0). The CPU backend (OpenCV) and the
DALI backend each implement every step type below; nothing else describes the presets.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Compress:
    """Re-encode as JPEG or WebP (WebP with probability `webp_fraction`) at quality U[lo, hi]
    (integers, both ends included), through OpenCV's encoders."""

    quality: tuple[int, int] = (50, 95)
    webp_fraction: float = 0.5


@dataclass(frozen=True)
class Blur:
    """Gaussian blur with OpenCV's sigma rule. The kernel size is drawn from [lo, hi] (integers)
    and even sizes are rounded up to the next odd one, so (3, 7) gives 3 / 5 / 7 with probability
    0.2 / 0.4 / 0.4 (albumentations' `GaussianBlur`)."""

    limit: tuple[int, int] = (3, 7)


@dataclass(frozen=True)
class Noise:
    """Additive Gaussian noise per pixel and channel, variance U[lo, hi] on the 0-255 scale."""

    variance: tuple[float, float] = (3.0, 10.0)


Degradation = Compress | Blur | Noise


@dataclass(frozen=True)
class OneOf:
    """With probability `p`, exactly one of `options`, chosen uniformly."""

    p: float
    options: tuple[Degradation, ...]


@dataclass(frozen=True)
class PadTo:
    """Pad so that both sides are at least `size`: centred (the odd pixel at the bottom/right),
    mirrored without repeating the edge (OpenCV's BORDER_REFLECT_101)."""

    size: int


@dataclass(frozen=True)
class Crop:
    """A `size`×`size` crop: uniformly placed when `random`, else centred (rounded up/left)."""

    size: int
    random: bool


Interpolation = Literal["linear", "cubic", "lanczos4", "auto"]


@dataclass(frozen=True)
class SquareResize:
    """A side h = U[min_side, max(min(short side, max_side), min_side)] (integers), then with
    probability `p`: PadTo(h), a random h×h crop, resized to `size`×`size` with OpenCV's
    `interpolation` (no antialiasing; "auto": Lanczos-4 when h > size, else cubic)."""

    p: float
    min_side: int
    size: int
    max_side: int | None = None
    interpolation: Interpolation = "auto"


@dataclass(frozen=True)
class ResizedCrop:
    """albumentations' `RandomResizedCrop(size, size)`: up to 10 tries of an area fraction
    U(`scale`) and an aspect ratio log-uniform in `ratio` that fit the image, else a centred crop
    of the whole image clamped to `ratio`; resized to `size`×`size` (OpenCV linear)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Rot90:
    """With probability `p`, rotate counter-clockwise by 0, 1, 2 or 3 quarter turns (uniformly,
    so a non-zero turn happens with probability 0.75·p)."""

    p: float


@dataclass(frozen=True)
class Flip:
    """With probability `p`, flip horizontally, vertically or both (uniformly)."""

    p: float


@dataclass(frozen=True)
class Branch:
    """With probability `p`, run exactly one of `choices` (weight, steps), chosen with probability
    weight / sum of weights."""

    p: float
    choices: tuple[tuple[float, tuple[Step, ...]], ...]


Step = PadTo | Crop | SquareResize | ResizedCrop | OneOf | Rot90 | Flip | Branch


@dataclass(frozen=True)
class Preset:
    """A named pipeline: `steps`, then normalisation; every output is `size`×`size`.

    `per_sample_seed` marks presets whose randomness must depend only on (seed, sample key), so
    that the result is identical whatever the batch size, worker or thread count (`social`).
    """

    name: str
    size: int
    steps: tuple[Step, ...]
    per_sample_seed: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalize: bool = field(default=True)


def _degradations(quality: tuple[int, int]) -> tuple[Degradation, ...]:
    return (Compress(quality=quality), Blur(), Noise())


def train_preset(crop: int = 96, degrade_p: float = 0.5, rot90_p: float = 0.33,
                 flip_p: float = 0.33, quality: tuple[int, int] = (50, 95),
                 random_resize: bool = False) -> Preset:
    """SelfCon pre-training: [p=0.5 square crop of side U[160, short side] resized to 256],
    pad, random crop, one degradation, rot90, flip."""
    steps: tuple[Step, ...] = ()
    if random_resize:
        steps += (SquareResize(p=0.5, min_side=160, size=256),)
    steps += (PadTo(crop), Crop(crop, random=True), OneOf(degrade_p, _degradations(quality)),
              Rot90(rot90_p), Flip(flip_p))
    return Preset("train", crop, steps)


def eval_preset(size: int = 256) -> Preset:
    """Evaluation: pad to `size`, centre crop `size`."""
    return Preset("eval", size, (PadTo(size), Crop(size, random=False)))


def calibration_preset(size: int = 256, p: float = 0.5, resized_weight: float = 0.3,
                       quality: tuple[int, int] = (50, 95)) -> Preset:
    """Classifier-head training: with probability `p` one branch, by weight `resized_weight` : 1
    (23.1 % : 76.9 % by default), of a resized crop + p=0.5 compression or a random crop + p=0.7
    one degradation; then random crop, rot90 and flip."""
    resized = (PadTo(size), ResizedCrop(size), OneOf(0.5, (Compress(quality=quality),)))
    cropped = (PadTo(size), Crop(size, random=True), OneOf(0.7, _degradations(quality)))
    steps: tuple[Step, ...] = (
        Branch(p, ((resized_weight, resized), (1.0, cropped))),
        PadTo(size), Crop(size, random=True), Rot90(0.33), Flip(0.33),
    )
    return Preset("calibration", size, steps)


def social_preset(size: int = 256, max_side: int = 1000, compress_p: float = 0.75,
                  quality: tuple[int, int] = (60, 100)) -> Preset:
    """The "social network" test set: square crop, Lanczos-4 resize, then JPEG/WebP; deterministic
    per sample."""
    steps: tuple[Step, ...] = (
        SquareResize(p=1.0, min_side=size, max_side=max_side, size=size, interpolation="lanczos4"),
        OneOf(compress_p, (Compress(quality=quality),)),
    )
    return Preset("social", size, steps, per_sample_seed=True)


PRESETS: dict[str, Callable[..., Preset]] = {"train": train_preset, "eval": eval_preset, "calibration": calibration_preset,
           "social": social_preset}


def get_preset(preset: str | Preset, **overrides) -> Preset:
    """Resolve a preset name (with builder keyword overrides, e.g. crop=128) or pass a Preset through."""
    if isinstance(preset, Preset):
        return replace(preset, **overrides) if overrides else preset
    try:
        builder = PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None
    return builder(**overrides)
