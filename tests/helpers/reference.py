"""The ImagiNet reference code's perturbations, built from albumentations 1.3.1 as its dataset does,
and a recorder of what they draw: the yardstick for tests/test_augment_reference.py.

`draw(pipeline, sizes, count, seed)` runs a reference pipeline many times and returns, for each
run, the transforms that ran with their parameters. Pixels are not computed there (decisions depend
only on image shapes), which makes 20,000 draws take seconds.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

A = pytest.importorskip("albumentations", reason="needs the seedref extra (albumentations==1.3.1)")
from albumentations import random_utils  # noqa: E402
from albumentations.core.transforms_interface import BasicTransform  # noqa: E402

JPEG = A.ImageCompression.ImageCompressionType.JPEG
WEBP = A.ImageCompression.ImageCompressionType.WEBP


def compression(low: int, high: int, p: float) -> A.OneOf:
    """JPEG or WebP, each weight 1, at quality [low, high]."""
    return A.OneOf([A.ImageCompression(quality_lower=low, quality_upper=high, compression_type=kind,
                                       p=1) for kind in (JPEG, WEBP)], p=p)


def degradation(p: float) -> A.OneOf:
    """One of compression, blur (3..7) and noise (variance 3..10), each weight 1."""
    return A.OneOf([compression(50, 95, 1), A.GaussianBlur(blur_limit=(3, 7), p=1.0),
                    A.GaussNoise(var_limit=(3.0, 10.0), p=1.0)], p=p)


def _train_pipeline(crop: int) -> A.Compose:
    return A.Compose([A.PadIfNeeded(crop, crop), A.RandomCrop(crop, crop), degradation(0.5),
                      A.RandomRotate90(p=0.33), A.Flip(p=0.33)], p=1.0)


def _calibration_pipeline() -> A.Compose:
    branches = A.OneOf([
        A.Compose([A.PadIfNeeded(256, 256), A.RandomResizedCrop(256, 256), compression(50, 95, 0.5)],
                  p=0.3),
        A.Compose([A.PadIfNeeded(256, 256), A.RandomCrop(256, 256), degradation(0.7)], p=1),
    ], p=0.5)
    return A.Compose([branches, A.PadIfNeeded(256, 256), A.RandomCrop(256, 256),
                      A.RandomRotate90(p=0.33), A.Flip(p=0.33)], p=1.0)


# built once, as the reference builds its fixed pipelines once per dataset
TRAIN_96 = _train_pipeline(96)
CALIBRATION = _calibration_pipeline()
EVALUATION = A.Compose([A.PadIfNeeded(256, 256), A.CenterCrop(256, 256)], p=1)


@functools.cache
def _square_resize(side: int, interpolation: int, p: float) -> A.Compose:
    """Pad to `side`, random `side` crop, resize to 256: the reference builds one per image (per
    drawn side); here they are cached by side, which draws the same."""
    return A.Compose([A.PadIfNeeded(side, side), A.RandomCrop(side, side),
                      A.Resize(256, 256, interpolation=interpolation)], p=p)


@functools.cache
def _social(side: int) -> A.Compose:
    return A.Compose([_square_resize(side, 4, 1.0), compression(60, 100, 0.75)], p=1)


def train(image: np.ndarray, resize: bool = False) -> np.ndarray:
    """The reference's training perturbation (`train=True`, optionally `resize=True`)."""
    if resize:
        side = random.randint(160, max(min(image.shape[:2]), 160))
        interpolation = 4 if side > 256 else 2  # cv2.INTER_LANCZOS4 / cv2.INTER_CUBIC
        image = _square_resize(side, interpolation, 0.5)(image=image)["image"]
    return TRAIN_96(image=image)["image"]


def evaluation(image: np.ndarray) -> np.ndarray:
    """The reference's default (evaluation) transform."""
    return EVALUATION(image=image)["image"]


def calibration(image: np.ndarray) -> np.ndarray:
    """The reference's anchor transform with `resize=True` (classifier-head training)."""
    return CALIBRATION(image=image)["image"]


def social(image: np.ndarray) -> np.ndarray:
    """The reference's `test_aug` transform (the social-network test set)."""
    side = random.randint(256, max(min(min(image.shape[:2]), 1000), 256))
    return _social(side)(image=image)["image"]


@dataclass(frozen=True)
class Applied:
    """One transform that ran: its class name, the transform, its parameters, the input's height
    and width."""

    name: str
    transform: BasicTransform
    params: dict
    height: int
    width: int


@dataclass(frozen=True)
class Normal:
    """What `random_utils.normal` was asked for while recording (instead of the samples)."""

    loc: float
    scale: float
    size: tuple[int, ...]


def _output_shape(transform: BasicTransform, params: dict, height: int, width: int
                  ) -> tuple[int, int]:
    name = type(transform).__name__
    if name == "PadIfNeeded":
        return max(height, transform.min_height), max(width, transform.min_width)
    if name in ("RandomCrop", "CenterCrop", "Resize", "RandomResizedCrop"):
        return transform.height, transform.width
    if name == "RandomRotate90" and params["factor"] % 2:
        return width, height
    return height, width


@contextmanager
def recording() -> Iterator[list[Applied]]:
    """Within the block, every albumentations transform that runs is appended to the yielded list
    and returns zeros of its output's shape instead of pixels (what any transform draws depends
    only on the shape). Noise fields are not generated: `GaussNoise` gets a `Normal` record.
    albumentations seeds a fresh numpy RandomState from python's generator for each numpy draw;
    here one RandomState is re-seeded with the same seed instead (the same draws, 60x faster).
    The zero images are shared by shape and read-only (allocating them took a fifth of the time)."""
    log: list[Applied] = []
    state = np.random.RandomState(0)
    zeros: dict[tuple[int, int], np.ndarray] = {}

    def get_random_state() -> np.random.RandomState:
        state.seed(random.randint(0, (1 << 32) - 1))
        return state

    def normal(loc=0.0, scale=1.0, size=None, random_state=None) -> Normal:
        return Normal(loc, scale, tuple(size))

    def apply(self, params, **kwargs):
        height, width = kwargs["image"].shape[:2]
        log.append(Applied(type(self).__name__, self, dict(params or {}), height, width))
        shape = _output_shape(self, params, height, width)
        if shape not in zeros:
            zeros[shape] = np.zeros((*shape, 3), np.uint8)
            zeros[shape].flags.writeable = False
        return {**kwargs, "image": zeros[shape]}

    patches = [(BasicTransform, "apply_with_params", apply),
               (random_utils, "get_random_state", get_random_state),
               (random_utils, "normal", normal)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield log
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


def draw(pipeline: Callable[[np.ndarray], np.ndarray], sizes: list[tuple[int, int]], count: int,
         seed: int) -> list[tuple[tuple[int, int], list[Applied]]]:
    """`count` runs of `pipeline` on zero images of `sizes` (cycled), python's and numpy's global
    generators seeded with `seed`: [(size, transforms that ran)]."""
    random.seed(seed)
    np.random.seed(seed)
    images = {size: np.zeros((*size, 3), np.uint8) for size in sizes}  # shapes are what counts
    out = []
    with recording() as log:
        for index in range(count):
            size = sizes[index % len(sizes)]
            log.clear()
            pipeline(images[size])
            out.append((size, list(log)))
    return out
