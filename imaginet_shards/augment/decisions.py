"""Per-sample decisions of a preset: `draw_params` turns the spec (`augment.spec`) plus a generator and an
image size into a concrete list of operations (where to crop, which degradation, which quality…).

Backend neutral and pure (numpy only): the CPU backend executes the operations, `perturb` records
them in each sample's JSON, and tests count them to check rates, e.g.
`Counter(type(op).__name__ for op in draw_params(preset, rng, 1024, 768))`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from imaginet_shards.augment.spec import (
    Blur,
    Branch,
    Compress,
    Crop,
    Degradation,
    Flip,
    Noise,
    OneOf,
    PadTo,
    Preset,
    Rot90,
    SquareResize,
    Step,
)


@dataclass(frozen=True)
class PadOp:
    """Zero-pad bottom/right to `height` x `width`."""

    height: int
    width: int


@dataclass(frozen=True)
class CropOp:
    """Keep rows [top, top+height) and columns [left, left+width)."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class ResizeOp:
    """Resize to `size` x `size`: Lanczos when `lanczos`, else antialiased bilinear."""

    size: int
    lanczos: bool


@dataclass(frozen=True)
class CompressOp:
    """Encode as `format` at `quality` and decode again."""

    format: Literal["jpeg", "webp"]
    quality: int


@dataclass(frozen=True)
class BlurOp:
    """Gaussian blur, `kernel` x `kernel`, sigma = 0.3 * ((kernel - 1) / 2 - 1) + 0.8 (OpenCV's rule)."""

    kernel: int


@dataclass(frozen=True)
class NoiseOp:
    """Add N(0, variance) noise (0-255 scale) per pixel and channel; `seed` fixes the noise field."""

    variance: float
    seed: int


@dataclass(frozen=True)
class RotOp:
    """Rotate counter-clockwise by `quarters` x 90°."""

    quarters: int


@dataclass(frozen=True)
class FlipOp:
    horizontal: bool
    vertical: bool


Op = PadOp | CropOp | ResizeOp | CompressOp | BlurOp | NoiseOp | RotOp | FlipOp


def draw_params(preset: Preset, rng: np.random.Generator, height: int, width: int
                ) -> tuple[Op, ...]:
    """The operations `preset` applies to one `height` x `width` image, drawn from `rng`.

    The last operation leaves a `preset.size` x `preset.size` image (normalisation is not an Op).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ops: list[Op] = []
    height, width = _draw_steps(preset.steps, rng, height, width, ops)
    if (height, width) != (preset.size, preset.size):
        raise ValueError(f"preset {preset.name!r} ends at {height}x{width}, not "
                         f"{preset.size}x{preset.size}: its steps must end with a crop or resize")
    return tuple(ops)


def ops_to_json(ops: tuple[Op, ...]) -> list[dict]:
    """A JSON-ready record of the operations, e.g. [{"op": "CropOp", "top": 3, ...}, ...]."""
    return [{"op": type(op).__name__, **asdict(op)} for op in ops]


def _draw_steps(steps: tuple[Step, ...], rng: np.random.Generator, height: int, width: int,
                ops: list[Op]) -> tuple[int, int]:
    for step in steps:
        height, width = _draw_step(step, rng, height, width, ops)
    return height, width


def _draw_step(step: Step, rng: np.random.Generator, height: int, width: int, ops: list[Op]
               ) -> tuple[int, int]:
    if isinstance(step, PadTo):
        if height < step.size or width < step.size:
            height, width = max(height, step.size), max(width, step.size)
            ops.append(PadOp(height, width))
    elif isinstance(step, Crop):
        if height < step.size or width < step.size:
            raise ValueError(f"cannot crop {step.size}x{step.size} from a {height}x{width} image "
                             "(put a PadTo step before the Crop)")
        if step.random:
            top, left = int(rng.integers(height - step.size + 1)), int(rng.integers(width - step.size + 1))
        else:
            top, left = (height - step.size) // 2, (width - step.size) // 2
        ops.append(CropOp(top, left, step.size, step.size))
        height = width = step.size
    elif isinstance(step, SquareResize):
        if rng.random() < step.p:
            short = min(height, width)
            high = short if step.max_side is None else min(short, step.max_side)
            side = int(rng.integers(min(step.min_side, high), high + 1))
            top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
            ops += [CropOp(top, left, side, side), ResizeOp(step.size, step.lanczos)]
            height = width = step.size
    elif isinstance(step, OneOf):
        if rng.random() < step.p:
            ops.append(_draw_degradation(step.options[int(rng.integers(len(step.options)))], rng))
    elif isinstance(step, Rot90):
        if rng.random() < step.p:
            quarters = int(rng.integers(1, 4))
            ops.append(RotOp(quarters))
            if quarters % 2:
                height, width = width, height
    elif isinstance(step, Flip):
        if rng.random() < step.p:
            mode = int(rng.integers(3))
            ops.append(FlipOp(horizontal=mode != 1, vertical=mode != 0))
    elif isinstance(step, Branch):
        if rng.random() < step.p:
            weights = np.array([w for w, _ in step.choices], dtype=float)
            chosen = step.choices[int(rng.choice(len(weights), p=weights / weights.sum()))][1]
            height, width = _draw_steps(chosen, rng, height, width, ops)
    else:
        raise ValueError(f"unknown preset step {step!r}")
    return height, width


def _draw_degradation(option: Degradation, rng: np.random.Generator) -> Op:
    if isinstance(option, Compress):
        fmt: Literal["jpeg", "webp"] = "webp" if rng.random() < option.webp_fraction else "jpeg"
        return CompressOp(fmt, int(rng.integers(option.quality[0], option.quality[1] + 1)))
    if isinstance(option, Blur):
        return BlurOp(int(option.kernels[int(rng.integers(len(option.kernels)))]))
    if isinstance(option, Noise):
        return NoiseOp(float(rng.uniform(*option.variance)), int(rng.integers(2**63)))
    raise ValueError(f"unknown degradation {option!r}")
