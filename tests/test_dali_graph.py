"""The DALI graph itself (`augment.dali.build_graph`) in small pipelines over `fn.external_source`:
one DALI decoder operator per pipeline for every preset, and every branch of the presets with its
probability forced to 0 and to 1 at batch size 1 (so that each conditional sees empty batches on
one side). The branch tests run on the CPU device here and on a GPU (`mixed`) where one exists.
"""
from __future__ import annotations

import io
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from helpers.dali_draws import HostDraws  # noqa: E402
from imaginet_shards.augment.dali import Draws, build_graph, decoder_arguments  # noqa: E402
from imaginet_shards.augment.spec import (  # noqa: E402
    Branch,
    Degradation,
    Flip,
    OneOf,
    Preset,
    ResizedCrop,
    Rot90,
    SquareResize,
    Step,
    get_preset,
)
from imaginet_shards.codecs.windows import WindowDecoder  # noqa: E402

DECODERS = {"Image", "ImageSlice", "ImageCrop", "ImageRandomCrop"}  # fn.decoders.* operators
DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)]


def coordinate_image(height: int, width: int) -> np.ndarray:
    """R = column, G = row, B = 255 (sides < 256): every pixel says where it came from."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols, rows, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def encode(image: np.ndarray, fmt: str) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return np.frombuffer(out.getvalue(), dtype=np.uint8)


# lossless coordinate images (PNG and WebP take the window route, JPEG DALI's ROI decoder), sides
# below and above the crops: padded on one axis, on both, or not at all
FORMATS = [((60, 130), "PNG"), ((200, 240), "WEBP"), ((97, 250), "JPEG"), ((250, 70), "PNG")]
IMAGES = [encode(coordinate_image(*size), fmt) for size, fmt in FORMATS]


def graph_pipeline(preset: Preset, device: str, windows: WindowDecoder | None,
                   batch_size: int = 1):
    """(built pipeline over IMAGES cycled, the host's draws) for `preset` on `device`."""
    if device == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none visible to torch here)")

    def numbers(iteration: int) -> list[int]:
        return [(iteration * batch_size + i) % len(IMAGES) for i in range(batch_size)]

    host = HostDraws(preset, lambda iteration: [FORMATS[n][0] for n in numbers(iteration)])

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=0 if device == "gpu" else None,
                  enable_conditionals=True, seed=7, prefetch_queue_depth=1)
    def pipeline():
        encoded = fn.external_source(source=lambda info: [IMAGES[n] for n in numbers(info.iteration)],
                                     batch=True, batch_info=True)
        return host.graph(encoded, decode_device="mixed" if device == "gpu" else "cpu",
                          windows=windows)

    pipe = pipeline()
    pipe.build()
    return pipe, host


def unfed_graph(preset: Preset, decode_device: str, windows: WindowDecoder | None,
                shapes: Any = None, windowed: bool = False) -> Any:
    """The graph of `preset` over named external sources (for graphs that are defined or built,
    not run)."""
    draws = Draws(fn.external_source(name="drawn", dtype=types.INT32, ndim=1),
                  fn.external_source(name="noise", dtype=types.FLOAT, ndim=3, layout="HWC"))
    images = fn.external_source(name="encoded", ndim=3 if windowed else 1,
                                layout="HWC" if windowed else None)
    return build_graph(images, preset, draws, decode_device, windows, shapes=shapes,
                       windowed=windowed)


@pytest.fixture(scope="module")
def windows():
    decoder = WindowDecoder(2)
    yield decoder
    decoder.close()


def operator_types(pipe, folder: Path) -> list[str]:
    """The type of every operator of a built pipeline, from its graph (DOT) file."""
    path = folder / "graph.dot"
    pipe.save_graph_to_dot_file(str(path))
    nodes = set(re.findall(r"\b(__\w+?_\d+)\b", path.read_text()))
    return [re.fullmatch(r"__(\w+?)_\d+", node).group(1) for node in sorted(nodes)]


PRESETS = {
    "train": lambda: get_preset("train"),
    "train+resize": lambda: get_preset("train", random_resize=True),
    "calibration": lambda: get_preset("calibration"),
    "eval": lambda: get_preset("eval"),
    "social": lambda: get_preset("social"),
}


def assert_one_decoder(pipe, folder: Path, windows: bool) -> None:
    types = operator_types(pipe, folder)
    assert sum(t in DECODERS for t in types) == 1, sorted(t for t in types if t in DECODERS)
    assert types.count("PythonFunction") == windows


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_decoder_per_pipeline(name, tmp_path):
    """Without the PNG/WebP window route; the forced variants below check the loader's graphs
    (with it)."""
    pipe, _ = graph_pipeline(PRESETS[name](), "cpu", None)
    assert_one_decoder(pipe, tmp_path, windows=False)


@pytest.mark.parametrize("name", ["train+resize", "calibration", "eval"])
def test_gpu_graph_is_defined_without_a_gpu(name, windows):
    """The `mixed` graph with the window route passes DALI's graph definition (device placement
    of every operator, conditionals included) without CUDA: one decoder, on "mixed", with the
    preset's decoder arguments; the window route on the CPU. Building it needs CUDA, so this
    stops at DALI's (private) graph-definition step."""
    preset = PRESETS[name]()

    @pipeline_def(batch_size=2, num_threads=1, device_id=0, enable_conditionals=True)
    def pipeline():
        return unfed_graph(preset, "mixed", windows)

    pipe = pipeline()
    pipe._build_graph()
    specs = [str(op._spec) for op in pipe._ops]
    heads = [spec.split("\n", 1)[0] for spec in specs]
    decoders = [spec for spec, head in zip(specs, heads) if "decoders__" in head]
    assert len(decoders) == 1 and "device: mixed" in decoders[0]
    assert ("hw_decoder_load: 0.0" in decoders[0]) == (name == "eval")
    assert "jpeg_fancy_upsampling: True" in decoders[0]
    route = [spec for spec, head in zip(specs, heads) if "PythonFunction" in head]
    assert len(route) == 1 and "device: cpu" in route[0]
    assert any("device: gpu" in spec for spec in specs)  # the rest follows the decoder


@pytest.mark.parametrize("name", ["train", "eval", "calibration"])
def test_a_tiled_graph_takes_its_image_shapes_from_the_feed(name, tmp_path):
    """DALI cannot read a `.tiles` header: the loader feeds the shapes it read while checking the
    headers, so the graph calls Python once per batch (the window route, which decodes and mirrors
    every image of a tiled set), not once per image, and has no decoder of its own, nor (where only
    the encoded image is padded) any mirroring operator; without fed shapes such a graph is
    refused."""
    tiled = WindowDecoder(1, tiled=True)

    def pipe(fed: bool):
        @pipeline_def(batch_size=2, num_threads=1, device_id=None, enable_conditionals=True)
        def pipeline():
            shapes = fn.external_source(name="shapes", ndim=1) if fed else None
            return unfed_graph(PRESETS[name](), "cpu", tiled, shapes)

        built = pipeline()
        built.build()
        return built

    try:
        types = operator_types(pipe(True), tmp_path)
        assert not [t for t in types if t in DECODERS] and types.count("PythonFunction") == 1
        assert ("Cat" in types) == (name == "calibration"), types  # its last PadTo pads pixels
        with pytest.raises(ValueError, match="shapes must be given"):
            pipe(False)
    finally:
        tiled.close()


@pytest.mark.parametrize("name", ["train", "eval"])
def test_a_windowed_graph_starts_after_the_crop(name, tmp_path):
    """Fed the windows a tiled set's loader decodes itself (presets that start by cutting one),
    the graph has no decoder, window route, slicing or mirroring of its own (`eval` only
    normalises); on a GPU it copies the windows there first. Other presets are refused."""
    preset = PRESETS[name]()

    def pipe(device_id: int | None, kept: Preset = preset):
        @pipeline_def(batch_size=2, num_threads=1, device_id=device_id, enable_conditionals=True)
        def pipeline():
            return unfed_graph(kept, "cpu" if device_id is None else "mixed", None, windowed=True)
        return pipeline()

    built = pipe(None)
    built.build()
    types = operator_types(built, tmp_path)
    assert not [t for t in types if t in DECODERS | {"PythonFunction", "Slice", "Cat"}], types
    assert (types.count("CropMirrorNormalize"), len(types) > 4) == (1, name == "train"), types
    on_gpu = pipe(0)
    on_gpu._build_graph()  # the definition only: building needs CUDA
    normalise = [str(op._spec) for op in on_gpu._ops
                 if "CropMirrorNormalize" in str(op._spec).split("\n", 1)[0]]
    assert len(normalise) == 1 and "device: gpu" in normalise[0]
    with pytest.raises(ValueError, match="cut no leading window"):
        pipe(None, PRESETS["calibration"]()).build()


def test_decoder_arguments_on_a_gpu():
    """A stable decode for deterministic presets: no hardware decoder share on a GPU."""
    assert decoder_arguments(get_preset("eval"), "mixed") == {"jpeg_fancy_upsampling": True,
                                                              "hw_decoder_load": 0.0}
    assert "hw_decoder_load" not in decoder_arguments(get_preset("train"), "mixed")
    assert decoder_arguments(get_preset("eval"), "cpu") == {}


# -- every branch at p = 0 and p = 1, batch size 1 ------------------------------------------------

def forced(steps: tuple[Step, ...], p: float) -> tuple[Step, ...]:
    """`steps` with every probability set to `p` (nested branches too)."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Branch):
            step = replace(step, p=p, choices=tuple((w, forced(s, p)) for w, s in step.choices))
        elif isinstance(step, OneOf | Rot90 | Flip | SquareResize):
            step = replace(step, p=p)
        out.append(step)
    return tuple(out)


def only_option(steps: tuple[Step, ...], kind: type) -> tuple[Step, ...]:
    """`steps` whose OneOfs (nested too) keep only their options of type `kind`."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, OneOf):
            step = replace(step, options=tuple(o for o in step.options if isinstance(o, kind)))
        elif isinstance(step, Branch):
            step = replace(step, choices=tuple((w, only_option(s, kind)) for w, s in step.choices))
        out.append(step)
    return tuple(out)


def only_choice(steps: tuple[Step, ...], index: int, fallback: bool = False) -> tuple[Step, ...]:
    """`steps` whose top-level Branch always takes choice `index` (the others weigh 0); with
    `fallback`, its ResizedCrops ask for more than the whole image, so that no try fits."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Branch):
            choices = []
            for number, (weight, sub) in enumerate(step.choices):
                if fallback:
                    sub = tuple(replace(s, scale=(4.0, 4.5)) if isinstance(s, ResizedCrop) else s
                                for s in sub)
                choices.append((weight if number == index else 0.0, sub))
            step = replace(step, choices=tuple(choices))
        out.append(step)
    return tuple(out)


def variant(name: str, p: float, edit=lambda steps: steps) -> Preset:
    preset = PRESETS[name]()
    return replace(preset, steps=edit(forced(preset.steps, p)), normalize=False)


KINDS: list[type[Degradation]] = [*{type(o) for o in get_preset("train").steps[2].options}]
CASES = {
    "train p=0": variant("train+resize", 0.0),
    "train p=1": variant("train+resize", 1.0),
    **{f"train {kind.__name__}": variant("train", 1.0, lambda s, k=kind: only_option(s, k))
       for kind in sorted(KINDS, key=lambda k: k.__name__)},
    "calibration p=0": variant("calibration", 0.0),
    "calibration resized fallback": variant("calibration", 1.0,
                                            lambda s: only_choice(s, 0, fallback=True)),
    "calibration cropped": variant("calibration", 1.0, lambda s: only_choice(s, 1)),
    "eval": replace(get_preset("eval", size=128), normalize=False),
}
EXPECTED = {  # decision (step type) -> allowed values when every probability is 0 / 1
    0.0: {"OneOf": {-1}, "Rot90": {0}, "Flip": {-1}, "Branch": {-1}, "SquareResize": {0}},
    1.0: {"Rot90": {0, 1, 2, 3}, "Flip": {0, 1, 2}, "SquareResize": {1}},
}


def allowed(preset: Preset, name: str, p: float) -> set[int]:
    """The values decision `name` ("{step number}.{step type}") may take when every probability
    of `preset` is `p`."""
    number, kind = name.split(".")
    step = preset.steps[int(number)]
    if p and isinstance(step, OneOf):
        return set(range(len(step.options)))
    if p and isinstance(step, Branch):  # the one choice with a weight
        return {next(i for i, (w, _) in enumerate(step.choices) if w > 0)}
    return EXPECTED[p][kind]


def is_window(image: np.ndarray) -> bool:
    """Whether `image` is a window of a reflect-101 padded coordinate image: untouched pixels."""
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    return bool((blue == 255).all() and (red == red[:1]).all() and (green == green[:, :1]).all()
                and (np.abs(np.diff(red[0])) == 1).all() and (np.abs(np.diff(green[:, 0])) == 1).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forced_branches_at_batch_size_one(case, device, windows, tmp_path):
    """Each image once through a variant with the window route (every run leaves one side of
    each conditional empty, the DALI decoder's too when a PNG or WebP comes)."""
    preset = CASES[case]
    pipe, host = graph_pipeline(preset, device, windows)
    assert_one_decoder(pipe, tmp_path, windows=True)
    p = 0.0 if case.endswith("p=0") else 1.0
    for iteration in range(len(IMAGES)):
        lossless = FORMATS[iteration % len(FORMATS)][1] != "JPEG"
        images = pipe.run()[0]
        image = np.asarray((images.as_cpu() if device == "gpu" else images).as_array())
        assert image.shape == (1, 3, preset.size, preset.size)
        pixels = np.clip(np.rint(image[0] * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        for name, value in host.of(iteration)[0].items():
            if name.count(".") == 1:  # the step's own decision, not its parameters
                assert value in allowed(preset, name, p), (case, name, value)
        if lossless and (p == 0.0 or case == "eval"):  # nothing but padding and crops
            assert is_window(pixels), (case, iteration)
        elif lossless and ("Noise" in case or "Blur" in case):  # degraded: not a plain window
            assert not is_window(pixels), (case, iteration)
