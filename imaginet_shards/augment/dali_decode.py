"""Materialising windows (`dali_nodes.View`) for the DALI graph (`augment.dali`): the one DALI
decoder of a pipeline, the PNG/WebP window route, and reflect-101 mirroring.

Windows inside the image are decoded as such: JPEG by DALI's ROI decoder on the CPU
(`fn.decoders.image_slice`, libjpeg-turbo; with "mixed" nvJPEG decodes the whole JPEG on the GPU
and the window is cut there, see `Decoder.decode_slice`), PNG and WebP by
windows.py through `fn.python_function` on CPU threads (on both devices, then copied to the GPU
with "mixed"; DALI's own decoders decode PNG and WebP whole on the CPU), the rest (other PNGs,
corrupt data) by the DALI decoder. A window that reaches past the image decodes the image's whole
extent along that axis and mirrors it, which is exactly pad-then-crop; a tiled image's window route
mirrors such a window itself (`windows.decode_mirrored`), so a tiled set's graph has no mirroring
operators.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nvidia.dali import fn, types
from nvidia.dali.pipeline import do_not_convert

from imaginet_shards.augment.dali_nodes import DataNode, View, extent, outputs, pair, reflect
from imaginet_shards.augment.spec import Crop, PadTo, Preset
from imaginet_shards.codecs.windows import WindowDecoder


@do_not_convert
def pixel_view(image: DataNode) -> View:
    """The whole of decoded HWC pixels."""
    return View.whole(image, False, image.shape(dtype=types.INT32))


@do_not_convert
def deterministic(preset: Preset) -> bool:
    """Whether `preset` draws nothing (only padding and centred crops, e.g. `eval`)."""
    return all(isinstance(step, PadTo) or (isinstance(step, Crop) and not step.random)
               for step in preset.steps)


@do_not_convert
def decoder_arguments(preset: Preset, decode_device: str) -> dict[str, Any]:
    """The decoder's extra arguments for `preset` on `decode_device`. With "mixed": nvJPEG with
    libjpeg-turbo's chroma upsampling; for deterministic presets no hardware JPEG decoder
    (`hw_decoder_load=0`), which otherwise takes a share of each batch, so that a sample's
    pixels would depend on its position in the batch."""
    if decode_device != "mixed":
        return {}
    args: dict[str, Any] = {"jpeg_fancy_upsampling": True}
    if deterministic(preset):
        args["hw_decoder_load"] = 0.0
    return args


class Decoder:
    """Decodes the windows of one pipeline with one DALI decoder operator (`decode_device` "cpu"
    or "mixed", `decoder_args` added to its arguments) and, where `windows` is given, the
    PNG/WebP window route. Each call of `pixels` on an encoded view adds a decoder: the graph
    builder merges windows first so that it calls it once."""

    def __init__(self, decode_device: str, windows: WindowDecoder | None,
                 decoder_args: Mapping[str, Any]):
        self.windows = windows
        self.gpu = decode_device == "mixed"
        self.tiled = windows is not None and windows.tiled  # only windows.py reads .tiles
        if self.tiled and self.gpu:
            raise NotImplementedError("tiled shard sets decode on the CPU (decode_device='cpu')")
        self.decoder = {"device": decode_device, "adjust_orientation": False,
                        "output_type": types.RGB, **decoder_args}

    @do_not_convert
    def encoded_view(self, encoded: DataNode, shapes: DataNode | None = None) -> View:
        """The whole of the encoded images, of the given `shapes` or the ones DALI peeks at."""
        if shapes is None:
            if self.tiled:
                raise ValueError("a tiled set's image shapes must be given: DALI cannot read "
                                 "the headers of .tiles members")
            shapes = fn.peek_image_shape(encoded, adjust_orientation=False, dtype=types.INT32)
        return View.whole(encoded, True, shapes)

    def pixels(self, view: View) -> DataNode:
        """Materialise a view: decode (or slice) the part of the source the window needs, then
        mirror it where the window may reach past the source."""
        if not view.encoded:
            if not view.cropped:
                return view.source
            return self.mirrored(view) if view.padded else self.read(view)
        if self.tiled:  # DALI's decoders cannot read .tiles members: the window route
            return self.routed(view)
        if not view.cropped:
            return fn.decoders.image(view.source, **self.decoder)
        return self.mirrored(view) if view.padded else self.read(view)

    def read(self, view: View, start: DataNode = None, shape: DataNode = None) -> DataNode:
        """The source's pixels in the window `start` + `shape` (default: the view's), which lies
        inside the source."""
        start = pair(view.top, view.left) if start is None else start
        shape = pair(view.height, view.width) if shape is None else shape
        if not view.encoded:
            return fn.slice(view.source, start=start, shape=shape, axis_names="HW")
        if self.windows is not None:
            return self.decode_window(view, start, shape)
        return self.decode_slice(view.source, start, shape)

    def mirrored(self, view: View) -> DataNode:
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

    @do_not_convert
    def route(self, view: View, start: DataNode, shape: DataNode) -> tuple[DataNode, DataNode]:
        """(pixels, decoded?) of the window `start` + `shape` of the view's encoded source
        through windows.py, which mirrors a window reaching past the source."""
        if self.windows is None:
            raise ValueError("this decoder was built without a window route (`windows`)")
        start, shape, size = (types.Constant(v, dtype=types.INT32) if isinstance(v, list) else v
                              for v in (start, shape, pair(view.src_h, view.src_w)))
        window, done = outputs(fn.python_function(view.source, start, shape, size,
                                                  function=self.windows, num_outputs=2,
                                                  output_layouts=["HWC", ""],
                                                  batch_processing=True), 2)
        return window, done

    def decode_window(self, view: View, start: DataNode, shape: DataNode) -> DataNode:
        """The window `start` + `shape` (inside the source) of the view's encoded images: PNGs
        and WebPs through windows.py where it applies, everything else through DALI's ROI
        decoder."""
        window, done = self.route(view, start, shape)
        if done:
            image = window.gpu() if self.gpu else window  # the route runs on the CPU
        else:
            image = self.decode_slice(view.source, start, shape)
        return image

    @do_not_convert
    def routed(self, view: View) -> DataNode:
        """A tiled set's window, anywhere: windows.py decodes every image of such a set (or
        raises), mirroring past the borders itself, so the graph needs no decoder or mirroring
        operators for it."""
        window, _ = self.route(view, pair(view.top, view.left), pair(view.height, view.width))
        return window

    @do_not_convert
    def decode_slice(self, encoded: DataNode, start: DataNode, shape: DataNode) -> DataNode:
        """DALI's own decoder on the window: on the CPU a true ROI decode for JPEG; on a GPU a
        whole-image nvJPEG decode, then the window is cut on the GPU (nvImageCodec hands an ROI
        decode with libjpeg-turbo's chroma upsampling back to its CPU decoder below nvJPEG 13.2)."""
        if self.gpu:
            return fn.slice(fn.decoders.image(encoded, **self.decoder), start=start, shape=shape,
                            axis_names="HW")
        return fn.decoders.image_slice(encoded, start=start, shape=shape, axis_names="HW",
                                       **self.decoder)
