"""The perturbation spec (`augment.spec`) interpreted as a DALI graph, step by step.

`build_graph` turns encoded images into normalised CHW float images inside a DALI pipeline defined
with `enable_conditionals=True`. Geometry is lazy: `PadTo`, `Crop` and the crops of `SquareResize`
and `ResizedCrop` only move a window over the encoded image, and the first step that needs pixels
decodes just that window (`dali_decode`: ROI decoding, the PNG/WebP window route, mirroring).
The graph draws nothing itself: each sample's choices and parameters are drawn on the host by
`decisions.draw_params` (the CPU backend's decisions for the same generator), fed as one int32
vector per sample and read by name (`dali_nodes.Draws`), with the Gaussian noise field of the
samples that draw noise (`augment.noise`); choices become `if` statements (DALI splits the batch,
runs each branch on its samples, merges). Where choices differ only in their windows
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

from collections.abc import Mapping
from typing import Any

import nvidia.dali.math as dmath
from nvidia.dali import fn, types
from nvidia.dali.pipeline import do_not_convert

from imaginet_shards.augment.dali_decode import Decoder, decoder_arguments, pixel_view
from imaginet_shards.augment.dali_nodes import (
    DataNode,
    DrawLayout,
    Draws,
    View,
    host_draws,
    merge,
    where,
)
from imaginet_shards.augment.decisions import window_steps
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

__all__ = ["Draws", "DrawLayout", "build_graph", "decoder_arguments", "host_draws"]

_Plan = tuple[View, tuple[int | None, str, int]]  # see _Builder.lazy


class _Builder:
    """Interprets steps for one pipeline, reading each sample's drawn values from `draws`."""

    def __init__(self, decoder: Decoder, draws: Draws):
        self.decoder, self.draws = decoder, draws

    # -- steps -------------------------------------------------------------------------------

    def run(self, steps: tuple[Step, ...], view: View, prefix: str = "", start: int = 0) -> View:
        """Apply `steps[start:]` to `view`; `prefix` + "{number}.{step type}" names their draws."""
        for number in range(start, len(steps)):
            step = steps[number]
            view = self.step(step, view, f"{prefix}{number}.{type(step).__name__}")
        return view

    def step(self, step: Step, view: View, name: str) -> View:
        """One step; geometry stays lazy, everything else works on pixels."""
        if isinstance(step, PadTo):
            return self.pad(view, step.size)
        if isinstance(step, Crop):
            return self.crop(view, step, name)
        if isinstance(step, SquareResize):
            return self.square_resize(view, step, name)
        if isinstance(step, ResizedCrop):
            return self.resized_crop(view, step, name)
        if isinstance(step, OneOf):
            return self.one_of(view, step, name)
        if isinstance(step, Rot90):
            return self.rot90(view, name)
        if isinstance(step, Flip):
            return self.flip(view, name)
        if isinstance(step, Branch):
            return self.branch(view, step, name)
        raise ValueError(f"unknown preset step {step!r}")

    def pad(self, view: View, size: DataNode) -> View:
        """Centred reflect-101 padding to at least `size` (the odd pixel at the bottom/right)."""
        if view.cropped:  # mirror at this view's borders, not the source's
            view = pixel_view(self.decoder.pixels(view))
        height, width = dmath.max(view.height, size), dmath.max(view.width, size)
        return view.moved(top=view.top - (height - view.height) // 2,
                          left=view.left - (width - view.width) // 2, height=height, width=width,
                          padded=True, cropped=True)

    @do_not_convert
    def window(self, view: View, name: str, height: DataNode, width: DataNode) -> View:
        """The `height` x `width` window of `view` at the drawn (name.top, name.left)."""
        return view.moved(top=view.top + self.draws.integer(f"{name}.top"),
                          left=view.left + self.draws.integer(f"{name}.left"), height=height,
                          width=width, cropped=True)

    def crop(self, view: View, step: Crop, name: str) -> View:
        return self.window(view, name, step.size, step.size)

    def square_resize(self, view: View, step: SquareResize, name: str) -> View:
        """The resized window for samples where the step applies, the view itself for the
        others: both windows of one source, merged before one decode."""
        if view.cropped:  # pad at this view's borders: one source for both windows
            view = pixel_view(self.decoder.pixels(view))
        side = self.draws.integer(f"{name}.side")
        window = self.window(self.pad(view, side), name, side, side)
        interpolation = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC,
                         "lanczos4": types.INTERP_LANCZOS3}.get(step.interpolation)
        if interpolation is None:  # "auto": Lanczos when shrinking, cubic otherwise
            interpolation = fn.cast(where(side > step.size, int(types.INTERP_LANCZOS3),
                                           int(types.INTERP_CUBIC)), dtype=types.INTERP_TYPE)
        if step.p >= 1.0:
            return pixel_view(self.resize(self.decoder.pixels(window), step.size, interpolation))
        apply = self.draws.integer(name)
        image = self.decoder.pixels(merge([window, view], 1 - apply))
        if apply == 1:
            image = self.resize(image, step.size, interpolation)
        return pixel_view(image)

    @staticmethod
    @do_not_convert
    def resize(image: DataNode, size: int, interpolation: Any) -> DataNode:
        """OpenCV-style resizing: sample at pixel centres, no antialiasing."""
        return fn.resize(image, size=[size, size], interp_type=interpolation, antialias=False)

    def resized_crop(self, view: View, step: ResizedCrop, name: str) -> View:
        window = self.resized_crop_window(view, name)
        return pixel_view(self.resize(self.decoder.pixels(window), step.size, types.INTERP_LINEAR))

    @do_not_convert
    def resized_crop_window(self, view: View, name: str) -> View:
        """albumentations' RandomResizedCrop's window, as drawn (`decisions.resized_crop_window`)."""
        return self.window(view, name, self.draws.integer(f"{name}.height"),
                           self.draws.integer(f"{name}.width"))

    def one_of(self, view: View, step: OneOf, name: str) -> View:
        image = self.decoder.pixels(view)
        chosen = self.draws.integer(name)
        # every option's parameters are read for every sample, outside the branches
        params = [self.params(option, f"{name}.{index}")
                  for index, option in enumerate(step.options)]
        for index, option in enumerate(step.options):
            if chosen == index:
                image = self.degrade(image, option, params[index])
        return pixel_view(image)

    @do_not_convert
    def params(self, option: Degradation, name: str) -> dict[str, DataNode]:
        """The drawn parameters of one degradation that the graph uses."""
        if isinstance(option, Compress):
            return {"quality": self.draws.integer(f"{name}.quality")}
        if isinstance(option, Blur):
            return {"kernel": self.draws.integer(f"{name}.kernel")}
        if isinstance(option, Noise):  # fed on the CPU, used on the image's device
            noise = self.draws.noise()
            return {"field": noise.gpu() if self.decoder.gpu else noise}
        raise ValueError(f"unknown degradation {option!r}")

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
        if isinstance(option, Noise):  # the host's field, added and truncated as numpy does
            return fn.cast(dmath.clamp(dmath.floor(image + params["field"]), 0.0, 255.0),
                           dtype=types.UINT8)
        raise ValueError(f"unknown degradation {option!r}")

    def rot90(self, view: View, name: str) -> View:
        image = self.decoder.pixels(view)
        quarters = self.draws.integer(name)  # counter-clockwise, 0 = no rotation
        if member(quarters, (1, 3), types.BOOL):
            image = fn.transpose(image, perm=[1, 0, 2], transpose_layout=False)
        # like torch.rot90: 1 = transpose + vertical flip, 3 = transpose + horizontal flip, 2 = both
        return pixel_view(flipped(image, quarters, horizontal=(2, 3), vertical=(1, 2)))

    def flip(self, view: View, name: str) -> View:
        mode = self.draws.integer(name)  # -1 none, 0 horizontal, 1 vertical, 2 both
        return pixel_view(flipped(self.decoder.pixels(view), mode, horizontal=(0, 2),
                                  vertical=(1, 2)))

    def branch(self, view: View, step: Branch, name: str) -> View:
        chosen = self.draws.integer(name)  # -1: none
        if view.cropped:  # the choices' windows must share one source
            view = pixel_view(self.decoder.pixels(view))
        plans = [self.lazy(steps, view, f"{name}.{index}.")
                 for index, (_, steps) in enumerate(step.choices)]
        none = len(plans)  # samples without a choice keep the whole view
        windows = [window for window, _ in plans] + [view]
        image = self.decoder.pixels(merge(windows, where(chosen < 0, none, chosen)))
        return pixel_view(self._select(image, chosen, step, plans, 0))

    def _select(self, image: DataNode, chosen: DataNode, step: Branch, plans: list[_Plan],
                index: int) -> DataNode:
        """`image` (the merged window's pixels) finished by choice `chosen` (nested if/else over
        the choices, -1 = none: unchanged)."""
        if index == len(plans):
            return image
        if chosen == index:
            out = self.finish(image, step.choices[index][1], *plans[index][1])
        else:
            out = self._select(image, chosen, step, plans, index + 1)
        return out

    def lazy(self, steps: tuple[Step, ...], view: View, prefix: str) -> _Plan:
        """(window, (size to resize it to or None, `prefix`, number of the first step left)):
        the leading steps of `steps` that only move the window over `view`'s source (a PadTo of
        an uncropped view, a Crop, a ResizedCrop's window), and what is left to do on its
        pixels."""
        for number, step in enumerate(steps):
            name = f"{prefix}{number}.{type(step).__name__}"
            if isinstance(step, PadTo) and not view.cropped:
                view = self.pad(view, step.size)
            elif isinstance(step, Crop):
                view = self.crop(view, step, name)
            elif isinstance(step, ResizedCrop):
                return self.resized_crop_window(view, name), (step.size, prefix, number + 1)
            else:
                return view, (None, prefix, number)
        return view, (None, prefix, len(steps))

    def finish(self, image: DataNode, steps: tuple[Step, ...], size: int | None, prefix: str,
               start: int) -> DataNode:
        """A choice's pixel work on its decoded window: the pending resize, then `steps[start:]`."""
        if size is not None:
            image = self.resize(image, size, types.INTERP_LINEAR)
        return self.decoder.pixels(self.run(steps, pixel_view(image), prefix, start))

    def after_window(self, steps: tuple[Step, ...], window: DataNode) -> DataNode:
        """`steps` on the pixels of the window their leading steps cut (`decisions.window_steps`),
        decoded by the caller: a ResizedCrop's resize, then the steps after them."""
        count = window_steps(steps)
        if count == 0:
            raise ValueError("these steps cut no leading window (PadTo, then Crop or ResizedCrop): "
                             "the graph must be fed whole images")
        last = steps[count - 1]
        if self.decoder.gpu:  # the caller's windows are on the CPU
            window = window.gpu()
        return self.finish(window, steps, last.size if isinstance(last, ResizedCrop) else None, "",
                           count)


@do_not_convert
def member(value: DataNode, keys: tuple[int, ...], dtype: Any = types.INT32) -> DataNode:
    """1 (or True) where the int32 `value` is one of `keys` (all >= 0), else 0: one operator."""
    return fn.lookup_table(value, keys=list(keys), values=[1] * len(keys), default_value=0,
                           dtype=dtype)


@do_not_convert
def flipped(image: DataNode, value: DataNode, horizontal: tuple[int, ...],
            vertical: tuple[int, ...]) -> DataNode:
    """`image` flipped horizontally where `value` is one of `horizontal`, vertically where it is
    one of `vertical` (per sample)."""
    return fn.flip(image, horizontal=member(value, horizontal), vertical=member(value, vertical))


def build_graph(encoded: DataNode, preset: Preset, draws: Draws, decode_device: str = "cpu",
                windows: WindowDecoder | None = None,
                decoder_args: Mapping[str, Any] | None = None, shapes: DataNode | None = None,
                windowed: bool = False) -> DataNode:
    """The images float32 CHW normalised of `preset`, executing each sample's values drawn on the
    host (`draws`, fed from `decisions.draw_params`' records: the CPU backend's decisions).
    `windows` (owned by the caller, which closes it) decodes PNG and WebP crops on CPU threads
    (on both devices); `decoder_args` (default `decoder_arguments(preset, decode_device)`) go to
    the pipeline's one DALI decoder. `shapes` gives the images' int32 (height, width, channels),
    read by the caller from the headers; without it DALI peeks at the encoded bytes, which it
    cannot do for a tiled set's `.tiles` members (`windows.tiled`: `shapes` is then required).
    The draws must be those of images of these shapes. With `windowed`, `encoded` holds instead
    the HWC uint8 pixels (on the CPU) of the window the preset's leading steps cut from each
    image (`decisions.window_steps`, `decisions.cut_window`), decoded by the caller: the graph
    starts after those steps and decodes nothing (ValueError for a preset without such steps).

    With "mixed" the pipeline must run DALI's default (dynamic) executor: GPU images' shapes
    feed CPU arithmetic, which the legacy executors (`exec_dynamic=False`, `exec_async=False` or
    `exec_pipelined=False`, separated queues) do not run.

    Call inside a pipeline defined with `enable_conditionals=True`.
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device must be 'cpu' or 'mixed', got {decode_device!r}")
    if decoder_args is None:
        decoder_args = decoder_arguments(preset, decode_device)
    if windowed:
        decoder = Decoder(decode_device, None, decoder_args)
        image = _Builder(decoder, draws).after_window(preset.steps, encoded)
    else:
        decoder = Decoder(decode_device, windows, decoder_args)
        image = decoder.pixels(_Builder(decoder, draws).run(preset.steps,
                                                            decoder.encoded_view(encoded, shapes)))
    mean = [255.0 * m for m in preset.mean] if preset.normalize else [0.0, 0.0, 0.0]
    std = [255.0 * s for s in preset.std] if preset.normalize else [255.0, 255.0, 255.0]
    return fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=mean,
                                    std=std)
