"""The perturbation spec (`augment.spec`) interpreted as a DALI graph, step by step.

`build_graph` turns encoded images into normalised CHW float images inside a DALI pipeline defined
with `enable_conditionals=True`. Geometry is lazy: `PadTo`, `Crop` and the crop of `SquareResize`
only move a window over the encoded image, and the first step that needs pixels decodes just that
window (`fn.decoders.image_slice`, a true ROI decode for JPEG; on the CPU, PNG and WebP windows
come from windows.py through `fn.python_function`), then zero-pads what lies outside the image,
which is exactly pad-then-crop. Per-sample choices are random draws on the CPU and
`if` statements on them (DALI splits the batch, runs each branch on its samples, merges).

The same graph runs on the CPU (`decode_device="cpu"`) and on a GPU (`decode_device="mixed"`):
every operator after the decoder follows its input's device, so nothing else changes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode as DaliNode

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
from imaginet_shards.codecs.windows import WindowDecoder

DataNode = Any  # nvidia.dali.pipeline.DataNode (or a Python int where a value is static)


def outputs(nodes: DaliNode | Sequence[DaliNode] | None, count: int) -> tuple[DataNode, ...]:
    """The `count` outputs of a DALI operator called with several outputs, checked."""
    if isinstance(nodes, DaliNode) or nodes is None or len(nodes) != count:
        raise TypeError(f"expected {count} DALI outputs, got {nodes!r}")
    return tuple(nodes)


@dataclass(frozen=True)
class _View:
    """A `height` x `width` window at (`top`, `left`) of `source`, which is encoded bytes or HWC
    pixels of `src_h` x `src_w`, conceptually zero-padded bottom/right. `padded` and `cropped` are
    static: whether the window may reach past the source, and whether it differs from it."""

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


def _int(node: DataNode) -> DataNode:
    return fn.cast(node, dtype=types.INT32)


def _coin(p: float) -> DataNode:
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def _randint(count: DataNode) -> DataNode:
    """Uniform integer in [0, count) per sample (count >= 1, a DataNode or int)."""
    scale = float(count) if isinstance(count, int) else fn.cast(count, dtype=types.FLOAT)
    draw = _int(dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * scale))
    return dmath.min(draw, count - 1)


def _chosen(p: float, index: DataNode) -> DataNode:
    """`index` for samples whose coin (probability p) came up, else -1."""
    return _int(_coin(p)) * (index + 1) - 1


def _pair(a: DataNode, b: DataNode) -> DataNode:
    """[a, b] per sample, as a static list when both are Python ints."""
    if isinstance(a, int) and isinstance(b, int):
        return [a, b]
    return fn.stack(*(types.Constant(v, dtype=types.INT32) if isinstance(v, int) else _int(v)
                      for v in (a, b)))


class _Builder:
    """Interprets steps for one pipeline; `decisions` collects per-sample draws of top-level steps."""

    def __init__(self, decode_device: str, windows: WindowDecoder | None):
        # on the CPU, PNG and WebP windows skip DALI's whole-image decoding (windows.py); with
        # "mixed", nvImageCodec decodes them on the CPU too, but that route is untested: off
        self.windows = windows if decode_device == "cpu" else None
        self.decoder = {"device": decode_device, "adjust_orientation": False,
                        "output_type": types.RGB}
        if decode_device == "mixed":  # nvJPEG with libjpeg-turbo's chroma upsampling
            self.decoder["jpeg_fancy_upsampling"] = True
        self.decisions: dict[str, DataNode] = {}

    # -- views -------------------------------------------------------------------------------

    def encoded_view(self, encoded: DataNode) -> _View:
        shape = fn.peek_image_shape(encoded, adjust_orientation=False, dtype=types.INT32)
        return _View.whole(encoded, True, shape)

    @staticmethod
    def pixel_view(image: DataNode) -> _View:
        return _View.whole(image, False, image.shape(dtype=types.INT32))

    def pixels(self, view: _View) -> DataNode:
        """Materialise a view: decode (or slice) the part of the window inside the source, then
        zero-pad it to the window's size when the window may reach past the source."""
        if not view.cropped:
            if not view.encoded:
                return view.source
            return fn.decoders.image(view.source, **self.decoder)
        top = dmath.clamp(view.top, 0, view.src_h - 1)
        left = dmath.clamp(view.left, 0, view.src_w - 1)
        bottom = dmath.clamp(view.top + view.height, top + 1, view.src_h)
        right = dmath.clamp(view.left + view.width, left + 1, view.src_w)
        start, shape = _pair(top, left), _pair(bottom - top, right - left)
        if view.encoded:
            image = self.decode_window(view.source, start, shape)
        else:
            image = fn.slice(view.source, start=start, shape=shape, axis_names="HW")
        if view.padded:
            image = fn.slice(image, start=_pair(view.top - top, view.left - left),
                             shape=_pair(view.height, view.width), axis_names="HW",
                             out_of_bounds_policy="pad", fill_values=0)
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
            return replace(view, height=dmath.max(view.height, step.size),
                           width=dmath.max(view.width, step.size), padded=True, cropped=True)
        if isinstance(step, Crop):
            return self.crop(view, step)
        if isinstance(step, SquareResize):
            return self.square_resize(view, step, name)
        if isinstance(step, OneOf):
            return self.one_of(view, step, name)
        if isinstance(step, Rot90):
            return self.rot90(view, step, name)
        if isinstance(step, Flip):
            return self.flip(view, step, name)
        if isinstance(step, Branch):
            return self.branch(view, step, name)
        raise ValueError(f"unknown preset step {step!r}")

    def _record(self, name: str | None, value: DataNode) -> None:
        if name is not None:
            self.decisions[name] = _int(value)

    @staticmethod
    def crop(view: _View, step: Crop) -> _View:
        size = step.size
        if step.random:
            top, left = _randint(view.height - size + 1), _randint(view.width - size + 1)
        else:
            top, left = (view.height - size) // 2, (view.width - size) // 2
        return replace(view, top=view.top + top, left=view.left + left, height=size, width=size,
                       cropped=True)

    def square_resize(self, view: _View, step: SquareResize, name: str | None) -> _View:
        short = dmath.min(view.height, view.width)
        high = short if step.max_side is None else dmath.min(short, step.max_side)
        low = dmath.min(step.min_side, high)
        side = low + _randint(high - low + 1)
        window = replace(view, top=view.top + _randint(view.height - side + 1),
                         left=view.left + _randint(view.width - side + 1), height=side, width=side,
                         cropped=True)
        if step.p >= 1.0:
            return self.pixel_view(self._resized(window, step))
        apply = _coin(step.p)
        self._record(name, apply)
        if apply:
            image = self._resized(window, step)
        else:
            image = self.pixels(view)
        return self.pixel_view(image)

    def _resized(self, window: _View, step: SquareResize) -> DataNode:
        interp = types.INTERP_LANCZOS3 if step.lanczos else types.INTERP_LINEAR
        return fn.resize(self.pixels(window), size=[step.size, step.size], interp_type=interp,
                         antialias=True)

    def one_of(self, view: _View, step: OneOf, name: str | None) -> _View:
        image = self.pixels(view)
        chosen = _chosen(step.p, fn.random.choice(len(step.options)))
        self._record(name, chosen)
        for index, option in enumerate(step.options):
            if chosen == index:
                image = self.degrade(image, option)
        return self.pixel_view(image)

    @staticmethod
    def degrade(image: DataNode, option: Degradation) -> DataNode:
        if isinstance(option, Compress):
            low, high = option.quality
            quality = low + _randint(high - low + 1)
            return fn.jpeg_compression_distortion(image, quality=quality)
        if isinstance(option, Blur):
            kernel = fn.random.choice(list(option.kernels))
            sigma = 0.3 * ((fn.cast(kernel, dtype=types.FLOAT) - 1.0) * 0.5 - 1.0) + 0.8
            return fn.gaussian_blur(image, window_size=kernel, sigma=sigma)
        if isinstance(option, Noise):
            variance = fn.random.uniform(range=list(option.variance))
            return fn.noise.gaussian(image, stddev=dmath.sqrt(variance))
        raise ValueError(f"unknown degradation {option!r}")

    def rot90(self, view: _View, step: Rot90, name: str | None) -> _View:
        image = self.pixels(view)
        quarters = _chosen(step.p, fn.random.choice(3)) + 1  # 0 = no rotation
        self._record(name, quarters)
        if (quarters == 1) | (quarters == 3):
            image = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
        # counter-clockwise like torch.rot90: 1 = transpose + vertical flip, 3 = transpose +
        # horizontal flip, 2 = both flips
        image = fn.flip(image, horizontal=_int((quarters == 2) | (quarters == 3)),
                        vertical=_int((quarters == 1) | (quarters == 2)))
        return self.pixel_view(image)

    def flip(self, view: _View, step: Flip, name: str | None) -> _View:
        image = self.pixels(view)
        mode = _chosen(step.p, fn.random.choice(3))  # -1 none, 0 horizontal, 1 vertical, 2 both
        self._record(name, mode)
        image = fn.flip(image, horizontal=_int((mode == 0) | (mode == 2)),
                        vertical=_int((mode == 1) | (mode == 2)))
        return self.pixel_view(image)

    def branch(self, view: _View, step: Branch, name: str | None) -> _View:
        weights = [float(w) for w, _ in step.choices]
        total = sum(weights)
        if len(weights) == 0 or total <= 0 or min(weights) < 0:
            raise ValueError(f"branch weights must be >= 0 with a positive sum, got {weights}")
        chosen = _chosen(step.p, fn.random.choice(len(weights), p=[w / total for w in weights]))
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
