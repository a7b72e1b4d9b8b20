"""Per-sample decisions of a preset: `draw_params` turns the spec (`augment.spec`) plus a generator and an
image size into a concrete list of operations (where to crop, which degradation, which quality…).

Backend neutral and pure (numpy only): the CPU backend executes the operations, `perturb` records
them in each sample's JSON, and tests count them to check rates, e.g.
`Counter(type(op).__name__ for op in draw_params(preset, rng, 1024, 768))`.
"""
from __future__ import annotations

import math
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
    ResizedCrop,
    Rot90,
    SquareResize,
    Step,
)


@dataclass(frozen=True)
class PadOp:
    """Pad to `height` x `width`, centred (top = (height - image height) // 2, likewise left),
    with OpenCV's BORDER_REFLECT_101 (mirrored without repeating the edge)."""

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
    """Resize to `size` x `size` with OpenCV's `interpolation` (no antialiasing; nothing to do
    when the image has that size already)."""

    size: int
    interpolation: Literal["linear", "cubic", "lanczos4"]


@dataclass(frozen=True)
class CompressOp:
    """Encode as `format` at `quality` and decode again (OpenCV, which reads RGB as BGR)."""

    format: Literal["jpeg", "webp"]
    quality: int


@dataclass(frozen=True)
class BlurOp:
    """Gaussian blur, `kernel` x `kernel`, sigma = 0.3 * ((kernel - 1) / 2 - 1) + 0.8 (OpenCV's rule)."""

    kernel: int


@dataclass(frozen=True)
class NoiseOp:
    """Add N(0, variance) noise (0-255 scale) per pixel and channel, then clip to [0, 255] and
    truncate; `seed` fixes the noise field."""

    variance: float
    seed: int


@dataclass(frozen=True)
class RotOp:
    """Rotate counter-clockwise by `quarters` x 90° (1, 2 or 3)."""

    quarters: int


@dataclass(frozen=True)
class FlipOp:
    horizontal: bool
    vertical: bool


Op = PadOp | CropOp | ResizeOp | CompressOp | BlurOp | NoiseOp | RotOp | FlipOp


def draw_params(preset: Preset, rng: np.random.Generator, height: int, width: int,
                record: dict[str, float] | None = None, marks: list[int] | None = None
                ) -> tuple[Op, ...]:
    """The operations `preset` applies to one `height` x `width` image, drawn from `rng`.

    The last operation leaves a `preset.size` x `preset.size` image (normalisation is not an Op).
    With `record`, also fills it with the values drawn, by step (what the DALI graph executes
    instead of drawing its own). For the step named N ("{number}.{step type}"; a Branch choice's
    steps "{branch}.{choice}.{number}.{step type}"): Crop N.top, N.left; SquareResize N (1
    applied, 0 not), N.side and, when applied, N.top, N.left; ResizedCrop N.top, N.left,
    N.height, N.width; OneOf N (the option, -1 none) and the chosen option's N.{option}.quality
    and .webp (1 or 0), .kernel or .variance; Rot90 N (counter-clockwise quarter turns, 0 none);
    Flip N (-1 none, 0 horizontal, 1 vertical, 2 both); Branch N (the choice, -1 none).
    Coordinates are those of the image the step receives (padded first where the step pads).
    With `marks`, also appends the number of operations drawn so far after each of the preset's
    steps (so `ops[:marks[n - 1]]` are those of its first n steps).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ops: list[Op] = []
    draw = _Draw(rng, ops, {} if record is None else record)
    height, width = draw.steps(preset.steps, "", height, width, marks)
    if (height, width) != (preset.size, preset.size):
        raise ValueError(f"preset {preset.name!r} ends at {height}x{width}, not "
                         f"{preset.size}x{preset.size}: its steps must end with a crop or resize")
    return tuple(ops)


def image_size(ops: tuple[Op, ...], height: int, width: int) -> tuple[int, int]:
    """The (height, width) of a `height` x `width` image after `ops`."""
    for op in ops:
        if isinstance(op, PadOp | CropOp):
            height, width = op.height, op.width
        elif isinstance(op, ResizeOp):
            height = width = op.size
        elif isinstance(op, RotOp) and op.quarters % 2:
            height, width = width, height
    return height, width


def window_steps(steps: tuple[Step, ...]) -> int:
    """How many of the leading `steps` only cut a window from the image: PadTo before any crop,
    Crop, and a ResizedCrop, which ends them (its resize is not part of the window); 0 when they
    cut no window. A loader can decode just that window (`cut_window`) and apply the other steps
    to its pixels."""
    count, cropped = 0, False
    for step in steps:
        if isinstance(step, ResizedCrop):
            return count + 1
        if isinstance(step, Crop):
            cropped = True
        elif not (isinstance(step, PadTo) and not cropped):
            break
        count += 1
    return count if cropped else 0


def cut_window(ops: tuple[Op, ...], height: int, width: int) -> CropOp:
    """The window that `ops` (those of `window_steps`: pads before any crop, then crops, perhaps
    a ResizedCrop's resize last, which is not part of the window) cut from a `height` x `width`
    image, in the image's coordinates: where it reaches past the image (negative `top` or
    `left`, or beyond the far edges) its pixels are the image's mirrored (reflect-101), as the
    pads make them."""
    if ops and isinstance(ops[-1], ResizeOp):
        ops = ops[:-1]
    top = left = 0
    cropped = False
    for op in ops:
        if isinstance(op, PadOp) and not cropped:
            top, left = top - (op.height - height) // 2, left - (op.width - width) // 2
            height, width = op.height, op.width
        elif isinstance(op, CropOp):
            top, left, height, width, cropped = top + op.top, left + op.left, op.height, op.width, True
        else:
            raise ValueError(f"{op!r} does not cut a window (pads before any crop, then crops)")
    return CropOp(top, left, height, width)


def ops_to_json(ops: tuple[Op, ...]) -> list[dict]:
    """A JSON-ready record of the operations, e.g. [{"op": "CropOp", "top": 3, ...}, ...]."""
    return [{"op": type(op).__name__, **asdict(op)} for op in ops]


@dataclass(frozen=True)
class _Draw:
    """One image's drawing: the generator, the operations so far and the values recorded."""

    rng: np.random.Generator
    ops: list[Op]
    record: dict[str, float]

    def steps(self, steps: tuple[Step, ...], prefix: str, height: int, width: int,
              marks: list[int] | None = None) -> tuple[int, int]:
        for number, step in enumerate(steps):
            height, width = self.step(step, f"{prefix}{number}.{type(step).__name__}", height,
                                      width)
            if marks is not None:
                marks.append(len(self.ops))
        return height, width

    def step(self, step: Step, name: str, height: int, width: int) -> tuple[int, int]:
        rng, ops, record = self.rng, self.ops, self.record
        if isinstance(step, PadTo):
            return _pad(step.size, height, width, ops)
        if isinstance(step, Crop):
            if height < step.size or width < step.size:
                raise ValueError(f"cannot crop {step.size}x{step.size} from a {height}x{width} "
                                 "image (put a PadTo step before the Crop)")
            if step.random:
                top, left = int(rng.integers(height - step.size + 1)), int(rng.integers(width - step.size + 1))
            else:
                top, left = (height - step.size) // 2, (width - step.size) // 2
            self.crop(name, CropOp(top, left, step.size, step.size))
            return step.size, step.size
        if isinstance(step, SquareResize):
            return self.square_resize(step, name, height, width)
        if isinstance(step, ResizedCrop):
            self.crop(name, resized_crop_window(step, rng, height, width), sized=True)
            ops.append(ResizeOp(step.size, "linear"))
            return step.size, step.size
        if isinstance(step, OneOf):
            record[name] = -1
            if rng.random() < step.p:
                index = int(rng.integers(len(step.options)))
                record[name] = index
                ops.append(self.degradation(step.options[index], f"{name}.{index}"))
        elif isinstance(step, Rot90):
            record[name] = 0
            if rng.random() < step.p:
                quarters = record[name] = int(rng.integers(4))
                if quarters:
                    ops.append(RotOp(quarters))
                if quarters % 2:
                    height, width = width, height
        elif isinstance(step, Flip):
            record[name] = -1
            if rng.random() < step.p:
                mode = record[name] = int(rng.integers(3))
                ops.append(FlipOp(horizontal=mode != 1, vertical=mode != 0))
        elif isinstance(step, Branch):
            record[name] = -1
            if rng.random() < step.p:
                weights = np.array([w for w, _ in step.choices], dtype=float)
                index = int(rng.choice(len(weights), p=weights / weights.sum()))
                record[name] = index
                height, width = self.steps(step.choices[index][1], f"{name}.{index}.", height,
                                           width)
        else:
            raise ValueError(f"unknown preset step {step!r}")
        return height, width

    def crop(self, name: str, op: CropOp, sized: bool = False) -> None:
        self.ops.append(op)
        self.record[f"{name}.top"], self.record[f"{name}.left"] = op.top, op.left
        if sized:
            self.record[f"{name}.height"], self.record[f"{name}.width"] = op.height, op.width

    def square_resize(self, step: SquareResize, name: str, height: int, width: int
                      ) -> tuple[int, int]:
        rng = self.rng
        short = min(height, width) if step.max_side is None else min(height, width, step.max_side)
        side = int(rng.integers(step.min_side, max(short, step.min_side) + 1))
        self.record[f"{name}.side"], self.record[name] = side, 0
        if rng.random() >= step.p:
            return height, width
        self.record[name] = 1
        height, width = _pad(side, height, width, self.ops)
        self.crop(name, CropOp(int(rng.integers(height - side + 1)),
                               int(rng.integers(width - side + 1)), side, side))
        interpolation = step.interpolation
        if interpolation == "auto":
            interpolation = "lanczos4" if side > step.size else "cubic"
        self.ops.append(ResizeOp(step.size, interpolation))
        return step.size, step.size

    def degradation(self, option: Degradation, name: str) -> Op:
        rng, record = self.rng, self.record
        if isinstance(option, Compress):
            webp = rng.random() < option.webp_fraction
            quality = int(rng.integers(option.quality[0], option.quality[1] + 1))
            record[f"{name}.webp"], record[f"{name}.quality"] = int(webp), quality
            return CompressOp("webp" if webp else "jpeg", quality)
        if isinstance(option, Blur):
            low, high = option.limit
            kernel = int(rng.integers(low, high + 1))
            if kernel % 2 == 0:  # albumentations rounds even sizes up (wrapping past `high`)
                kernel = (kernel + 1) % (high + 1)
            record[f"{name}.kernel"] = kernel
            return BlurOp(kernel)
        if isinstance(option, Noise):
            variance = record[f"{name}.variance"] = float(rng.uniform(*option.variance))
            return NoiseOp(variance, int(rng.integers(2**63)))
        raise ValueError(f"unknown degradation {option!r}")


def _pad(size: int, height: int, width: int, ops: list[Op]) -> tuple[int, int]:
    if height < size or width < size:
        height, width = max(height, size), max(width, size)
        ops.append(PadOp(height, width))
    return height, width


def resized_crop_window(step: ResizedCrop, rng: np.random.Generator, height: int, width: int
                        ) -> CropOp:
    """The crop of albumentations 1.3.1's `RandomResizedCrop` on a `height` x `width` image: up to
    10 tries, then a centred crop of the whole image clamped to the aspect-ratio range."""
    area = height * width
    log_ratio = (math.log(step.ratio[0]), math.log(step.ratio[1]))
    for _ in range(10):
        target = float(rng.uniform(*step.scale)) * area
        aspect = math.exp(float(rng.uniform(*log_ratio)))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropOp(int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w)
    aspect = width / height
    h, w = height, width
    if aspect < min(step.ratio):
        h = int(round(w / min(step.ratio)))
    elif aspect > max(step.ratio):
        w = int(round(h * max(step.ratio)))
    return CropOp((height - h) // 2, (width - w) // 2, h, w)
