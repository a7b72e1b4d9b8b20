"""The DALI graph (`augment.dali.build_graph`) in a test's own pipeline, fed the values drawn on
the host for each sample as the loader feeds them (`host_draws`: `decisions.draw_params` records
and noise fields, packed by the graph's layout)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from nvidia.dali import fn, types

from imaginet_shards.augment.dali import DrawLayout, Draws, build_graph, host_draws
from imaginet_shards.augment.dali_nodes import SampleDraws
from imaginet_shards.augment.spec import Preset

Sizes = Callable[[int], list[tuple[int, int]]]  # iteration -> (height, width) of its samples


class HostDraws:
    """The records drawn for each iteration's samples (generator of (seed, iteration, index)),
    kept for the test to compare with what it sees."""

    def __init__(self, preset: Preset, sizes: Sizes, seed: int = 0):
        self.preset, self.sizes, self.seed = preset, sizes, seed
        self.drawn: dict[int, list[SampleDraws]] = {}
        self.layout: DrawLayout | None = None

    def _of(self, iteration: int) -> list[SampleDraws]:
        if iteration not in self.drawn:
            self.drawn[iteration] = [
                host_draws(self.preset, np.random.default_rng([self.seed, iteration, index]),
                           height, width, noise=True)
                for index, (height, width) in enumerate(self.sizes(iteration))]
        return self.drawn[iteration]

    def of(self, iteration: int) -> list[dict[str, float]]:
        """The records of `iteration`'s samples."""
        return [drawn.record for drawn in self._of(iteration)]

    def _packed(self, info: Any, kind: int) -> list[np.ndarray]:
        assert self.layout is not None, "build the graph first"
        drawn = self._of(info.iteration)
        return self.layout.pack([d.record for d in drawn], [d.field for d in drawn])[kind]

    def graph(self, encoded: Any, **graph_args: Any) -> Any:
        """`build_graph` of the preset on `encoded` (call inside a pipeline definition). Only the
        layout is kept, not the graph's nodes: no reference cycle through the pipeline."""
        draws = Draws(
            fn.external_source(source=lambda info: self._packed(info, 0), batch=True,
                               batch_info=True, dtype=types.INT32, ndim=1),
            fn.external_source(source=lambda info: self._packed(info, 1), batch=True,
                               batch_info=True, dtype=types.FLOAT, ndim=3, layout="HWC"))
        images = build_graph(encoded, self.preset, draws, **graph_args)
        self.layout = draws.layout()
        return images
