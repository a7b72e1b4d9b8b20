"""Per-sample values and arithmetic for the DALI graph (`augment.dali`): the host's draws
(`Draws`), selections, reflect-101 padding built from slices, flips and concatenation (DALI has no
mirrored border), and the lazy window (`View`) that geometry steps move before any pixel exists.
None of them holds a per-sample `if`: all are kept from AutoGraph's rewriting (`do_not_convert`,
see `augment.dali`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import nvidia.dali.math as dmath
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode as DaliNode
from nvidia.dali.pipeline import do_not_convert

from imaginet_shards.augment.decisions import CropOp, NoiseOp, cut_window, draw_params, image_size
from imaginet_shards.augment.noise import noise_field
from imaginet_shards.augment.spec import Preset

DataNode = Any  # nvidia.dali.pipeline.DataNode (or a Python int where a value is static)


@do_not_convert
def as_int(node: DataNode) -> DataNode:
    return fn.cast(node, dtype=types.INT32)


NO_FIELD = np.zeros((1, 1, 3), dtype=np.float32)  # fed for samples without a noise field


@dataclass(frozen=True)
class DrawLayout:
    """What each sample's feed holds: the int32 vector of drawn values named `ints` (see
    `decisions.draw_params`), and with `noise` a float32 HWC noise field."""

    ints: tuple[str, ...] = ()
    noise: bool = False

    def pack(self, records: Sequence[Mapping[str, float]],
             fields: Sequence[np.ndarray | None]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(int32 vectors, noise fields) of the samples' records and fields (none when the graph
        reads none); a value a sample did not draw (an option or choice it did not take) is 0,
        a missing field NO_FIELD."""
        return ([np.array([r.get(n, 0) for n in self.ints], dtype=np.int32) for r in records],
                [NO_FIELD if f is None else np.ascontiguousarray(f) for f in fields]
                if self.noise else [])


@dataclass
class Draws:
    """The host's draws for each sample, inside the graph: `integer(name)` reads one value from
    the fed int32 vector (`int_values`), the order of first reads fixing its layout
    (`layout()`); `noise()` is the fed noise field (`noise_values`)."""

    int_values: DataNode
    noise_values: DataNode
    _ints: list[str] = field(default_factory=list)
    _reads_noise: bool = False

    @do_not_convert
    def integer(self, name: str) -> DataNode:
        return self.int_values[_slot(self._ints, name)]

    def noise(self) -> DataNode:
        self._reads_noise = True
        return self.noise_values

    def layout(self) -> DrawLayout:
        return DrawLayout(tuple(self._ints), self._reads_noise)


class SampleDraws(NamedTuple):
    """What the host feeds the graph for one image (see `host_draws`)."""

    record: dict[str, float]
    field: np.ndarray | None
    window: CropOp | None


def host_draws(preset: Preset, rng: np.random.Generator, height: int, width: int, noise: bool,
               window: int = 0) -> SampleDraws:
    """What the host feeds the graph for one `height` x `width` image: the record of
    `decisions.draw_params`; with `noise`, the noise field it draws (None if it draws none); with
    `window` (the preset's `decisions.window_steps`), the window those steps cut from the image
    (`decisions.cut_window`), for a graph fed that window's pixels. ValueError when the preset
    cannot apply to the image, or adds noise to it twice (one field a sample)."""
    record: dict[str, float] = {}
    marks: list[int] = []
    ops = draw_params(preset, rng, height, width, record, marks)
    cut = cut_window(ops[:marks[window - 1]], height, width) if window else None
    noisy = [number for number, op in enumerate(ops) if isinstance(op, NoiseOp)] if noise else []
    if len(noisy) > 1:
        raise ValueError(f"preset {preset.name!r} adds noise {len(noisy)} times to one image: "
                         "the DALI graph takes one noise field a sample")
    if not noisy:
        return SampleDraws(record, None, cut)
    op = ops[noisy[0]]
    assert isinstance(op, NoiseOp)
    return SampleDraws(record, noise_field(op, *image_size(ops[:noisy[0]], height, width)), cut)


def _slot(names: list[str], name: str) -> int:
    if name not in names:
        names.append(name)
    return names.index(name)


@do_not_convert
def where(condition: DataNode, a: DataNode, b: DataNode) -> DataNode:
    """`a` where `condition` holds, else `b` (per sample, integers)."""
    chosen = as_int(condition)
    return chosen * a + (1 - chosen) * b


REFLECTIONS = 5  # rounds of mirroring: a side n pads to 3**5 * (n - 1) + 1 (487 for n = 3)


@do_not_convert
def reflect(image: DataNode, before: DataNode, after: DataNode, axis: int) -> DataNode:
    """`image` mirrored (reflect-101) by `before` / `after` rows (axis 0) or columns (axis 1).
    Each round mirrors at most length - 1 per side, and the new ends are again mirror axes of
    the same periodic extension, so rounds compose; what 5 rounds cannot reach (sides of 1 or 2
    pixels) stays short (the caller cuts its window with zero fill)."""
    for _ in range(REFLECTIONS):
        length = image.shape(dtype=types.INT32)[axis]
        head, tail = dmath.min(before, length - 1), dmath.min(after, length - 1)
        vertical = int(axis == 0)
        first = fn.flip(fn.slice(image, start=fn.stack(as_int(head * 0 + 1)), shape=fn.stack(as_int(head)),
                                 axes=[axis]), vertical=vertical, horizontal=1 - vertical)
        last = fn.flip(fn.slice(image, start=fn.stack(as_int(length - 1 - tail)),
                                shape=fn.stack(as_int(tail)), axes=[axis]),
                       vertical=vertical, horizontal=1 - vertical)
        image = fn.cat(first, image, last, axis=axis)
        before, after = before - head, after - tail
    return image


@do_not_convert
def extent(start: DataNode, size: DataNode, limit: DataNode
            ) -> tuple[DataNode, DataNode, DataNode, DataNode, DataNode]:
    """Along one axis, for a window [start, start + size) over a source [0, limit): the source
    range to read (all of it if the window reaches past it), the mirrored pads before/after that
    range, and the window's offset into the padded range."""
    outside = (start < 0) | (start + size > limit)
    low = where(outside, start * 0, start)
    high = where(outside, limit, start + size)
    before = dmath.max(low - start, 0)
    after = dmath.max(start + size - high, 0)
    return low, high, before, after, start - low + before


@do_not_convert
def pair(a: DataNode, b: DataNode) -> DataNode:
    """[a, b] per sample, as a static list when both are Python ints."""
    if isinstance(a, int) and isinstance(b, int):
        return [a, b]
    return fn.stack(*(types.Constant(v, dtype=types.INT32) if isinstance(v, int) else as_int(v)
                      for v in (a, b)))


@dataclass(frozen=True)
class View:
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
    @do_not_convert
    def whole(cls, source: DataNode, encoded: bool, shape: DataNode) -> View:
        """The whole of a source whose HWC shape is `shape`."""
        height, width = shape[0], shape[1]
        return cls(source, encoded, height, width, height * 0, width * 0, height, width)

    @do_not_convert
    def moved(self, **changes: Any) -> View:
        """This view with `changes` (`dataclasses.replace`, kept from AutoGraph's rewriting)."""
        return replace(self, **changes)


@do_not_convert
def merge(views: Sequence[View], chosen: DataNode) -> View:
    """Per sample, the window of `views[chosen]` (chosen in 0..len - 1): windows of one source
    merged before decoding, so that branches that only move the window share one decoder."""
    first = views[0]
    if any(v.source is not first.source for v in views):
        raise ValueError("only windows of one source can be merged")
    merged = views[-1]
    for index in range(len(views) - 2, -1, -1):
        view, picked = views[index], chosen == index
        merged = View(first.source, first.encoded, first.src_h, first.src_w,
                      where(picked, view.top, merged.top), where(picked, view.left, merged.left),
                      where(picked, view.height, merged.height),
                      where(picked, view.width, merged.width),
                      view.padded or merged.padded, view.cropped or merged.cropped)
    return merged


@do_not_convert
def outputs(nodes: DaliNode | Sequence[DaliNode] | None, count: int) -> tuple[DataNode, ...]:
    """The `count` outputs of a DALI operator called with several outputs, checked."""
    if isinstance(nodes, DaliNode) or nodes is None or len(nodes) != count:
        raise TypeError(f"expected {count} DALI outputs, got {nodes!r}")
    return tuple(nodes)
