"""The perturbation spec (`augment.spec`) interpreted as a DALI graph, step by step.

`build_graph` turns encoded images into normalised CHW float images inside a DALI pipeline defined
with `enable_conditionals=True`. Geometry is lazy: `PadTo`, `Crop` and the crops of `SquareResize`
and `ResizedCrop` only move a window over the encoded image, and the first step that needs pixels
decodes just that window (`dali_decode`: ROI decoding, the PNG/WebP window route, mirroring).
Per-sample choices are random draws on the CPU and `if` statements on them (DALI splits the
batch, runs each branch on its samples, merges). Where choices differ only in their windows
(`SquareResize` applied or not, the branches of a `Branch` up to their first pixel step), the
windows are merged per sample before decoding: every preset decodes once, with one DALI decoder
operator (each has its own thread pool, codec state and buffers).

The same graph runs on the CPU (`decode_device="cpu"`) and on a GPU (`decode_device="mixed"`):
every operator after the decoder follows its input's device, so nothing else changes.

With conditionals enabled, DALI's AutoGraph rewrites every function the pipeline calls (about
0.1 s each; building a pipeline took about 5 s). Only the functions on a path to a per-sample `if`
need it; the others are marked `do_not_convert`, and such a function must never call one that
holds a per-sample `if` (it would run unrewritten and fail on the `if`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn, types
from nvidia.dali.pipeline import do_not_convert

from imaginet_shards.augment.dali_decode import Decoder, decoder_arguments, pixel_view
from imaginet_shards.augment.dali_nodes import (
    DataNode,
    View,
    as_int,
    chosen_or_none,
    coin,
    merge,
    outputs,
    randint,
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

__all__ = ["build_graph", "decoder_arguments", "outputs"]

_Plan = tuple[View, tuple[int | None, tuple[Step, ...]]]  # see _Builder.lazy


class _Builder:
    """Interprets steps for one pipeline; `decisions` collects per-sample draws of top-level steps."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.decisions: dict[str, DataNode] = {}

    # -- steps -------------------------------------------------------------------------------

    def run(self, steps: tuple[Step, ...], view: View, record: bool) -> View:
        """Apply `steps` to `view`, recording decisions when `record` (top level only)."""
        for number, step in enumerate(steps):
            view = self.step(step, view, f"{number}.{type(step).__name__}" if record else None)
        return view

    def step(self, step: Step, view: View, name: str | None) -> View:
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

    @do_not_convert
    def _record(self, name: str | None, value: DataNode, dtype: Any = types.INT32) -> None:
        if name is not None:
            self.decisions[name] = fn.cast(value, dtype=dtype)

    def pad(self, view: View, size: DataNode) -> View:
        """Centred reflect-101 padding to at least `size` (the odd pixel at the bottom/right)."""
        if view.cropped:  # mirror at this view's borders, not the source's
            view = pixel_view(self.decoder.pixels(view))
        height, width = dmath.max(view.height, size), dmath.max(view.width, size)
        return view.moved(top=view.top - (height - view.height) // 2,
                          left=view.left - (width - view.width) // 2, height=height, width=width,
                          padded=True, cropped=True)

    @staticmethod
    @do_not_convert
    def crop(view: View, step: Crop) -> View:
        size = step.size
        if step.random:
            top, left = randint(view.height - size + 1), randint(view.width - size + 1)
        else:
            top, left = (view.height - size) // 2, (view.width - size) // 2
        return view.moved(top=view.top + top, left=view.left + left, height=size, width=size,
                          cropped=True)

    def square_resize(self, view: View, step: SquareResize, name: str | None) -> View:
        """The resized window for samples whose coin came up, the view itself for the others:
        both windows of one source, merged before one decode."""
        if view.cropped:  # pad at this view's borders: one source for both windows
            view = pixel_view(self.decoder.pixels(view))
        short = dmath.min(view.height, view.width)
        if step.max_side is not None:
            short = dmath.min(short, step.max_side)
        side = step.min_side + randint(dmath.max(short, step.min_side) - step.min_side + 1)
        self._record(name and f"{name}.side", side)
        padded = self.pad(view, side)
        window = padded.moved(top=padded.top + randint(padded.height - side + 1),
                              left=padded.left + randint(padded.width - side + 1), height=side,
                              width=side)
        interpolation = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC,
                         "lanczos4": types.INTERP_LANCZOS3}.get(step.interpolation)
        if interpolation is None:  # "auto": Lanczos when shrinking, cubic otherwise
            interpolation = fn.cast(where(side > step.size, int(types.INTERP_LANCZOS3),
                                           int(types.INTERP_CUBIC)), dtype=types.INTERP_TYPE)
        if step.p >= 1.0:
            return pixel_view(self.resize(self.decoder.pixels(window), step.size, interpolation))
        apply = coin(step.p)
        self._record(name, apply)
        image = self.decoder.pixels(merge([window, view], 1 - as_int(apply)))
        if apply:
            image = self.resize(image, step.size, interpolation)
        return pixel_view(image)

    @staticmethod
    @do_not_convert
    def resize(image: DataNode, size: int, interpolation: Any) -> DataNode:
        """OpenCV-style resizing: sample at pixel centres, no antialiasing."""
        return fn.resize(image, size=[size, size], interp_type=interpolation, antialias=False)

    def resized_crop(self, view: View, step: ResizedCrop, name: str | None) -> View:
        window = self.resized_crop_window(view, step, name)
        return pixel_view(self.resize(self.decoder.pixels(window), step.size, types.INTERP_LINEAR))

    @do_not_convert
    def resized_crop_window(self, view: View, step: ResizedCrop, name: str | None) -> View:
        """albumentations' RandomResizedCrop's window: the first of 10 (area, aspect) tries that
        fits, else a centred crop of the whole view clamped to the aspect range."""
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
        return view.moved(top=view.top + top, left=view.left + left, height=crop_h,
                          width=crop_w, cropped=True)

    def one_of(self, view: View, step: OneOf, name: str | None) -> View:
        image = self.decoder.pixels(view)
        chosen = chosen_or_none(step.p, fn.random.choice(len(step.options)))
        self._record(name, chosen)
        # every option's parameters are drawn for every sample (outside the branches), so that
        # the top level can report them
        drawn = [self.draw(option, name and f"{name}.{index}")
                 for index, option in enumerate(step.options)]
        for index, option in enumerate(step.options):
            if chosen == index:
                image = self.degrade(image, option, drawn[index])
        return pixel_view(image)

    @do_not_convert
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
    @do_not_convert
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

    def rot90(self, view: View, step: Rot90, name: str | None) -> View:
        image = self.decoder.pixels(view)
        quarters = as_int(coin(step.p)) * as_int(fn.random.choice(4))  # 0 = no rotation
        self._record(name, quarters)
        if (quarters == 1) | (quarters == 3):
            image = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
        # counter-clockwise like torch.rot90: 1 = transpose + vertical flip, 3 = transpose +
        # horizontal flip, 2 = both flips
        image = fn.flip(image, horizontal=as_int((quarters == 2) | (quarters == 3)),
                        vertical=as_int((quarters == 1) | (quarters == 2)))
        return pixel_view(image)

    def flip(self, view: View, step: Flip, name: str | None) -> View:
        image = self.decoder.pixels(view)
        mode = chosen_or_none(step.p, fn.random.choice(3))  # -1 none, 0 horizontal, 1 vertical, 2 both
        self._record(name, mode)
        image = fn.flip(image, horizontal=as_int((mode == 0) | (mode == 2)),
                        vertical=as_int((mode == 1) | (mode == 2)))
        return pixel_view(image)

    def branch(self, view: View, step: Branch, name: str | None) -> View:
        weights = [float(w) for w, _ in step.choices]
        total = sum(weights)
        if len(weights) == 0 or total <= 0 or min(weights) < 0:
            raise ValueError(f"branch weights must be >= 0 with a positive sum, got {weights}")
        chosen = chosen_or_none(step.p, fn.random.choice(len(weights), p=[w / total for w in weights]))
        self._record(name, chosen)
        if view.cropped:  # the choices' windows must share one source
            view = pixel_view(self.decoder.pixels(view))
        plans = [self.lazy(steps, view) for _, steps in step.choices]
        none = len(plans)  # samples without a choice keep the whole view
        windows = [window for window, _ in plans] + [view]
        image = self.decoder.pixels(merge(windows, where(chosen < 0, none, chosen)))
        return pixel_view(self._select(image, chosen, plans, 0))

    def _select(self, image: DataNode, chosen: DataNode, plans: list[_Plan], index: int
                ) -> DataNode:
        """`image` (the merged window's pixels) finished by choice `chosen` (nested if/else over
        the choices, -1 = none: unchanged)."""
        if index == len(plans):
            return image
        if chosen == index:
            out = self.finish(image, *plans[index][1])
        else:
            out = self._select(image, chosen, plans, index + 1)
        return out

    def lazy(self, steps: tuple[Step, ...], view: View) -> _Plan:
        """(window, (size to resize it to or None, remaining steps)): the leading steps of
        `steps` that only move the window over `view`'s source (a PadTo of an uncropped view, a
        Crop, a ResizedCrop's window), and what is left to do on its pixels."""
        for number, step in enumerate(steps):
            if isinstance(step, PadTo) and not view.cropped:
                view = self.pad(view, step.size)
            elif isinstance(step, Crop):
                view = self.crop(view, step)
            elif isinstance(step, ResizedCrop):
                return self.resized_crop_window(view, step, None), (step.size, steps[number + 1:])
            else:
                return view, (None, steps[number:])
        return view, (None, ())

    def finish(self, image: DataNode, size: int | None, steps: tuple[Step, ...]) -> DataNode:
        """A choice's pixel work on its decoded window: the pending resize, then `steps`."""
        if size is not None:
            image = self.resize(image, size, types.INTERP_LINEAR)
        return self.decoder.pixels(self.run(steps, pixel_view(image), record=False))


def build_graph(encoded: DataNode, preset: Preset, decode_device: str = "cpu",
                windows: WindowDecoder | None = None,
                decoder_args: Mapping[str, Any] | None = None, shapes: DataNode | None = None
                ) -> tuple[DataNode, dict[str, DataNode]]:
    """(images float32 CHW normalised, per-sample decisions of the top-level steps) for `preset`.
    `windows` (owned by the caller, which closes it) decodes PNG and WebP crops on CPU threads
    (on both devices); `decoder_args` (default `decoder_arguments(preset, decode_device)`) go to
    the pipeline's one DALI decoder. `shapes` gives the images' int32 (height, width, channels),
    read by the caller from the headers; without it DALI peeks at the encoded bytes, which it
    cannot do for a tiled set's `.tiles` members (`windows.tiled`: `shapes` is then required).

    With "mixed" the pipeline must run DALI's default (dynamic) executor: GPU images' shapes
    feed CPU arithmetic, which the legacy executors (`exec_dynamic=False`, `exec_async=False` or
    `exec_pipelined=False`, separated queues) do not run.

    Call inside a pipeline defined with `enable_conditionals=True`. As in `decisions.draw_params`,
    a Crop needs an image at least its size (a PadTo first); here a smaller one would give a batch
    of uneven shapes instead of a ValueError. Decision names are
    "{step number}.{step type}"; values: OneOf/Branch the chosen option (-1 none), Rot90 the
    counter-clockwise quarter turns (0 none), Flip -1 none / 0 horizontal / 1 vertical / 2 both,
    SquareResize 1 when applied (only recorded for p < 1).
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device must be 'cpu' or 'mixed', got {decode_device!r}")
    if decoder_args is None:
        decoder_args = decoder_arguments(preset, decode_device)
    decoder = Decoder(decode_device, windows, decoder_args)
    builder = _Builder(decoder)
    image = decoder.pixels(builder.run(preset.steps, decoder.encoded_view(encoded, shapes),
                                       record=True))
    mean = [255.0 * m for m in preset.mean] if preset.normalize else [0.0, 0.0, 0.0]
    std = [255.0 * s for s in preset.std] if preset.normalize else [255.0, 255.0, 255.0]
    out = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)
    return out, builder.decisions
