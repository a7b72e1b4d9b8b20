"""The perturbation spec (`augment.spec`) interpreted as a DALI graph, step by step.

`build_graph` turns encoded images into normalised CHW float images inside a DALI pipeline defined
with `enable_conditionals=True`. Geometry is lazy: `PadTo`, `Crop` and the crops of `SquareResize`
and `ResizedCrop` only move a window over the encoded image, and the first step that needs pixels
decodes just that window (`fn.decoders.image_slice`, a true ROI decode for JPEG; on the CPU, PNG
and WebP windows come from windows.py through `fn.python_function`). A window that reaches past
the image (after a `PadTo`) decodes the whole image along that axis and mirrors it
(reflect-101, by slices, flips and concatenation), which is exactly pad-then-crop. Per-sample
choices are random draws on the CPU and `if` statements on them (DALI splits the batch, runs each
branch on its samples, merges).

The same graph runs on the CPU (`decode_device="cpu"`) and on a GPU (`decode_device="mixed"`):
every operator after the decoder follows its input's device, so nothing else changes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode as DaliNode

from imaginet_shards.augment.dali_nodes import (
    DataNode,
    as_int,
    chosen_or_none,
    coin,
    extent,
    pair,
    randint,
    reflect,
    rounded,
    uniform,
    where,
)
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
from imaginet_shards.codecs.windows import WindowDecoder


def outputs(nodes: DaliNode | Sequence[DaliNode] | None, count: int) -> tuple[DataNode, ...]:
    """The `count` outputs of a DALI operator called with several outputs, checked."""
    if isinstance(nodes, DaliNode) or nodes is None or len(nodes) != count:
        raise TypeError(f"expected {count} DALI outputs, got {nodes!r}")
    return tuple(nodes)


@dataclass(frozen=True)
class _View:
    """A `height` x `width` window at (`top`, `left`) of `source`, which is encoded bytes or HWC
    pixels of `src_h` x `src_w`, conceptually mirrored (reflect-101) beyond its borders: `top` and
    `left` may be negative. `padded` and `cropped` are static: whether the window may reach past
    the source, and whether it differs from it."""

    source: DataNode
    encoded: bool
    src_h: DataNode
    src_w: DataNode
    top: DataNode
    left: DataNode
    height: DataNode
    width: DataNode
    padded: bool = False
    cropped: bool = False

    @classmethod
    def whole(cls, source: DataNode, encoded: bool, shape: DataNode) -> _View:
        """The whole of a source whose HWC shape is `shape`."""
        height, width = shape[0], shape[1]
        return cls(source, encoded, height, width, height * 0, width * 0, height, width)


class _Builder:
    """Interprets steps for one pipeline; `decisions` collects per-sample draws of top-level steps."""

    def __init__(self, decode_device: str, windows: WindowDecoder | None):
        # on the CPU, PNG and WebP windows skip DALI's whole-image decoding (windows.py); with
        # "mixed", nvImageCodec decodes them on the CPU too, but that route is untested: off
        self.windows = windows if decode_device == "cpu" else None
        self.tiled = windows is not None and windows.tiled  # only windows.py reads .tiles
        if self.tiled and decode_device != "cpu":
            raise NotImplementedError("tiled shard sets decode on the CPU (decode_device='cpu')")
        self.decoder = {"device": decode_device, "adjust_orientation": False,
                        "output_type": types.RGB}
        if decode_device == "mixed":  # nvJPEG with libjpeg-turbo's chroma upsampling
            self.decoder["jpeg_fancy_upsampling"] = True
        self.decisions: dict[str, DataNode] = {}

    # -- views -------------------------------------------------------------------------------

    def encoded_view(self, encoded: DataNode) -> _View:
        if self.tiled:
            shape = fn.python_function(encoded, function=self.windows.shape)  # type: ignore[union-attr]
        else:
            shape = fn.peek_image_shape(encoded, adjust_orientation=False, dtype=types.INT32)
        return _View.whole(encoded, True, shape)

    @staticmethod
    def pixel_view(image: DataNode) -> _View:
        return _View.whole(image, False, image.shape(dtype=types.INT32))

    def pixels(self, view: _View) -> DataNode:
        """Materialise a view: decode (or slice) the part of the source the window needs, then
        mirror it where the window may reach past the source."""
        if not view.cropped:
            if not view.encoded:
                return view.source
            if self.tiled:
                return self.read(view, pair(view.top, view.left), pair(view.height, view.width))
            return fn.decoders.image(view.source, **self.decoder)
        if view.padded:
            return self.mirrored(view)
        start, shape = pair(view.top, view.left), pair(view.height, view.width)
        return self.read(view, start, shape)

    def read(self, view: _View, start: DataNode, shape: DataNode) -> DataNode:
        """The source's pixels in the window `start` + `shape` (inside the source)."""
        if view.encoded:
            return self.decode_window(view.source, start, shape)
        return fn.slice(view.source, start=start, shape=shape, axis_names="HW")

    def mirrored(self, view: _View) -> DataNode:
        """A window that may reach past the source: read what it needs (the window itself when it
        lies inside the source), then mirror and cut. One decoder for both cases; only the
        mirroring is conditional, so the batch is not split before decoding."""
        top, bottom, pad_top, pad_bottom, row = extent(view.top, view.height, view.src_h)
        left, right, pad_left, pad_right, col = extent(view.left, view.width, view.src_w)
        image = self.read(view, pair(top, left), pair(bottom - top, right - left))
        if (pad_top + pad_bottom + pad_left + pad_right + row + col) > 0:
            image = reflect(reflect(image, pad_top, pad_bottom, 0), pad_left, pad_right, 1)
            image = fn.slice(image, start=pair(row, col), shape=pair(view.height, view.width),
                             axis_names="HW", out_of_bounds_policy="pad", fill_values=0)
        return image

    def decode_window(self, encoded: DataNode, start: DataNode, shape: DataNode) -> DataNode:
        """The window `start` + `shape` (HW) of encoded images: PNGs and WebPs through windows.py
        where it applies, everything else through DALI's ROI decoder."""
        if self.windows is None:
            return self.decode_slice(encoded, start, shape)
        start, shape = (types.Constant(v, dtype=types.INT32) if isinstance(v, list) else v
                        for v in (start, shape))
        window, done = outputs(fn.python_function(encoded, start, shape, function=self.windows,
                                                  num_outputs=2, output_layouts=["HWC", ""],
                                                  batch_processing=True), 2)
        if done:
            image = window
        else:
            image = self.decode_slice(encoded, start, shape)
        return image

    def decode_slice(self, encoded: DataNode, start: DataNode, shape: DataNode) -> DataNode:
        """DALI's own decoder on the window (a true ROI decode for JPEG)."""
        return fn.decoders.image_slice(encoded, start=start, shape=shape, axis_names="HW",
                                       **self.decoder)

    # -- steps -------------------------------------------------------------------------------

    def run(self, steps: tuple[Step, ...], view: _View, record: bool) -> _View:
        """Apply `steps` to `view`, recording decisions when `record` (top level only)."""
        for number, step in enumerate(steps):
            view = self.step(step, view, f"{number}.{type(step).__name__}" if record else None)
        return view

    def step(self, step: Step, view: _View, name: str | None) -> _View:
        """One step; geometry stays lazy, everything else works on pixels."""
        if isinstance(step, PadTo):
            return self.pad(view, step.size)
        if isinstance(step, Crop):
            return self.crop(view, step)
        if isinstance(step, SquareResize):
            return self.square_resize(view, step, name)
        if isinstance(step, ResizedCrop):
            return self.resized_crop(view, step, name)
        if isinstance(step, OneOf):
            return self.one_of(view, step, name)
        if isinstance(step, Rot90):
            return self.rot90(view, step, name)
        if isinstance(step, Flip):
            return self.flip(view, step, name)
        if isinstance(step, Branch):
            return self.branch(view, step, name)
        raise ValueError(f"unknown preset step {step!r}")

    def _record(self, name: str | None, value: DataNode, dtype: Any = types.INT32) -> None:
        if name is not None:
            self.decisions[name] = fn.cast(value, dtype=dtype)

    def pad(self, view: _View, size: DataNode) -> _View:
        """Centred reflect-101 padding to at least `size` (the odd pixel at the bottom/right)."""
        if view.cropped:  # mirror at this view's borders, not the source's
            view = self.pixel_view(self.pixels(view))
        height, width = dmath.max(view.height, size), dmath.max(view.width, size)
        return replace(view, top=view.top - (height - view.height) // 2,
                       left=view.left - (width - view.width) // 2, height=height, width=width,
                       padded=True, cropped=True)

    @staticmethod
    def crop(view: _View, step: Crop) -> _View:
        size = step.size
        if step.random:
            top, left = randint(view.height - size + 1), randint(view.width - size + 1)
        else:
            top, left = (view.height - size) // 2, (view.width - size) // 2
        return replace(view, top=view.top + top, left=view.left + left, height=size, width=size,
                       cropped=True)

    def square_resize(self, view: _View, step: SquareResize, name: str | None) -> _View:
        short = dmath.min(view.height, view.width)
        if step.max_side is not None:
            short = dmath.min(short, step.max_side)
        side = step.min_side + randint(dmath.max(short, step.min_side) - step.min_side + 1)
        self._record(name and f"{name}.side", side)
        padded = self.pad(view, side)
        window = replace(padded, top=padded.top + randint(padded.height - side + 1),
                         left=padded.left + randint(padded.width - side + 1), height=side,
                         width=side)
        interpolation = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC,
                         "lanczos4": types.INTERP_LANCZOS3}.get(step.interpolation)
        if interpolation is None:  # "auto": Lanczos when shrinking, cubic otherwise
            interpolation = fn.cast(where(side > step.size, int(types.INTERP_LANCZOS3),
                                           int(types.INTERP_CUBIC)), dtype=types.INTERP_TYPE)
        if step.p >= 1.0:
            return self.pixel_view(self.resize(self.pixels(window), step.size, interpolation))
        apply = coin(step.p)
        self._record(name, apply)
        if apply:
            image = self.resize(self.pixels(window), step.size, interpolation)
        else:
            image = self.pixels(view)
        return self.pixel_view(image)

    @staticmethod
    def resize(image: DataNode, size: int, interpolation: Any) -> DataNode:
        """OpenCV-style resizing: sample at pixel centres, no antialiasing."""
        return fn.resize(image, size=[size, size], interp_type=interpolation, antialias=False)

    def resized_crop(self, view: _View, step: ResizedCrop, name: str | None) -> _View:
        """albumentations' RandomResizedCrop: the first of 10 (area, aspect) tries that fits,
        else a centred crop of the whole view clamped to the aspect range."""
        height, width = view.height, view.width
        area = fn.cast(height * width, dtype=types.FLOAT)
        low, high = min(step.ratio), max(step.ratio)
        ratio = fn.cast(width, dtype=types.FLOAT) / fn.cast(height, dtype=types.FLOAT)
        crop_h = where(ratio < low, rounded(fn.cast(width, dtype=types.FLOAT) / low), height)
        crop_w = where(ratio > high, rounded(fn.cast(height, dtype=types.FLOAT) * high), width)
        found = height * 0
        for _ in range(10):
            target = uniform(*step.scale) * area
            aspect = dmath.exp(uniform(math.log(low), math.log(high)))
            w, h = rounded(dmath.sqrt(target * aspect)), rounded(dmath.sqrt(target / aspect))
            fits = (found == 0) & (w > 0) & (w <= width) & (h > 0) & (h <= height)
            crop_h, crop_w, found = where(fits, h, crop_h), where(fits, w, crop_w), found | fits
        top = where(found, randint(height - crop_h + 1), (height - crop_h) // 2)
        left = where(found, randint(width - crop_w + 1), (width - crop_w) // 2)
        self._record(name and f"{name}.height", crop_h)
        self._record(name and f"{name}.width", crop_w)
        window = replace(view, top=view.top + top, left=view.left + left, height=crop_h,
                         width=crop_w, cropped=True)
        return self.pixel_view(self.resize(self.pixels(window), step.size, types.INTERP_LINEAR))

    def one_of(self, view: _View, step: OneOf, name: str | None) -> _View:
        image = self.pixels(view)
        chosen = chosen_or_none(step.p, fn.random.choice(len(step.options)))
        self._record(name, chosen)
        # every option's parameters are drawn for every sample (outside the branches), so that
        # the top level can report them
        drawn = [self.draw(option, name and f"{name}.{index}")
                 for index, option in enumerate(step.options)]
        for index, option in enumerate(step.options):
            if chosen == index:
                image = self.degrade(image, option, drawn[index])
        return self.pixel_view(image)

    def draw(self, option: Degradation, name: str | None) -> dict[str, DataNode]:
        """The per-sample parameters of one degradation (recorded as `name`.parameter)."""
        if isinstance(option, Compress):
            low, high = option.quality
            params = {"quality": low + randint(high - low + 1),
                      "webp": as_int(coin(option.webp_fraction))}
        elif isinstance(option, Blur):
            low, high = option.limit
            kernel = low + randint(high - low + 1)
            params = {"kernel": where(kernel % 2 == 0, (kernel + 1) % (high + 1), kernel)}
        elif isinstance(option, Noise):
            params = {"variance": uniform(*option.variance)}
        else:
            raise ValueError(f"unknown degradation {option!r}")
        for key, value in params.items():
            self._record(name and f"{name}.{key}", value,
                         types.FLOAT if key == "variance" else types.INT32)
        return params

    @staticmethod
    def degrade(image: DataNode, option: Degradation, params: dict[str, DataNode]) -> DataNode:
        if isinstance(option, Compress):  # JPEG for WebP too; red and blue swapped as OpenCV's
            swapped = fn.color_space_conversion(image, image_type=types.RGB, output_type=types.BGR)
            damaged = fn.jpeg_compression_distortion(swapped, quality=params["quality"])
            return fn.color_space_conversion(damaged, image_type=types.BGR, output_type=types.RGB)
        if isinstance(option, Blur):
            kernel = params["kernel"]
            sigma = 0.3 * ((fn.cast(kernel, dtype=types.FLOAT) - 1.0) * 0.5 - 1.0) + 0.8
            return fn.gaussian_blur(image, window_size=kernel, sigma=sigma)
        if isinstance(option, Noise):  # mean -0.5, rounded: the reference's truncation
            return fn.noise.gaussian(image, stddev=dmath.sqrt(params["variance"]), mean=-0.5)
        raise ValueError(f"unknown degradation {option!r}")

    def rot90(self, view: _View, step: Rot90, name: str | None) -> _View:
        image = self.pixels(view)
        quarters = as_int(coin(step.p)) * as_int(fn.random.choice(4))  # 0 = no rotation
        self._record(name, quarters)
        if (quarters == 1) | (quarters == 3):
            image = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
        # counter-clockwise like torch.rot90: 1 = transpose + vertical flip, 3 = transpose +
        # horizontal flip, 2 = both flips
        image = fn.flip(image, horizontal=as_int((quarters == 2) | (quarters == 3)),
                        vertical=as_int((quarters == 1) | (quarters == 2)))
        return self.pixel_view(image)

    def flip(self, view: _View, step: Flip, name: str | None) -> _View:
        image = self.pixels(view)
        mode = chosen_or_none(step.p, fn.random.choice(3))  # -1 none, 0 horizontal, 1 vertical, 2 both
        self._record(name, mode)
        image = fn.flip(image, horizontal=as_int((mode == 0) | (mode == 2)),
                        vertical=as_int((mode == 1) | (mode == 2)))
        return self.pixel_view(image)

    def branch(self, view: _View, step: Branch, name: str | None) -> _View:
        weights = [float(w) for w, _ in step.choices]
        total = sum(weights)
        if len(weights) == 0 or total <= 0 or min(weights) < 0:
            raise ValueError(f"branch weights must be >= 0 with a positive sum, got {weights}")
        chosen = chosen_or_none(step.p, fn.random.choice(len(weights), p=[w / total for w in weights]))
        self._record(name, chosen)
        return self.pixel_view(self._select(view, chosen, step.choices, 0))

    def _select(self, view: _View, chosen: DataNode, choices: tuple, index: int) -> DataNode:
        """Pixels of `view` after choice `chosen` (nested if/else over the choices, -1 = none)."""
        if index == len(choices):
            return self.pixels(view)
        if chosen == index:
            image = self.pixels(self.run(choices[index][1], view, record=False))
        else:
            image = self._select(view, chosen, choices, index + 1)
        return image


def build_graph(encoded: DataNode, preset: Preset, decode_device: str = "cpu",
                windows: WindowDecoder | None = None) -> tuple[DataNode, dict[str, DataNode]]:
    """(images float32 CHW normalised, per-sample decisions of the top-level steps) for `preset`.
    On the CPU, `windows` (owned by the caller, which closes it) decodes PNG and WebP crops.

    Call inside a pipeline defined with `enable_conditionals=True`. As in `decisions.draw_params`,
    a Crop needs an image at least its size (a PadTo first); here a smaller one would give a batch
    of uneven shapes instead of a ValueError. Decision names are
    "{step number}.{step type}"; values: OneOf/Branch the chosen option (-1 none), Rot90 the
    counter-clockwise quarter turns (0 none), Flip -1 none / 0 horizontal / 1 vertical / 2 both,
    SquareResize 1 when applied (only recorded for p < 1).
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device must be 'cpu' or 'mixed', got {decode_device!r}")
    builder = _Builder(decode_device, windows)
    image = builder.pixels(builder.run(preset.steps, builder.encoded_view(encoded), record=True))
    mean = [255.0 * m for m in preset.mean] if preset.normalize else [0.0, 0.0, 0.0]
    std = [255.0 * s for s in preset.std] if preset.normalize else [255.0, 255.0, 255.0]
    out = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
    return out, builder.decisions
