"""The DALI graph (`augment.dali.build_graph`) in a test's own pipeline, fed the values drawn on
the host for each sample as the loader feeds them: `decisions.draw_params` records, packed by the
graph's layout."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from nvidia.dali import fn, types

from imaginet_shards.augment.dali import Draws, build_graph
from imaginet_shards.augment.decisions import draw_params
from imaginet_shards.augment.spec import Preset

Sizes = Callable[[int], list[tuple[int, int]]]  # iteration -> (height, width) of its samples


class HostDraws:
    """The records drawn for each iteration's samples (generator of (seed, iteration, index)),
    kept for the test to compare with what it sees."""

    def __init__(self, preset: Preset, sizes: Sizes, seed: int = 0):
        self.preset, self.sizes, self.seed = preset, sizes, seed
        self.records: dict[int, list[dict[str, float]]] = {}
        self.draws: Draws | None = None

    def of(self, iteration: int) -> list[dict[str, float]]:
        if iteration not in self.records:
            drawn = []
            for index, (height, width) in enumerate(self.sizes(iteration)):
                record: dict[str, float] = {}
                rng = np.random.default_rng([self.seed, iteration, index])
                draw_params(self.preset, rng, height, width, record)
                drawn.append(record)
            self.records[iteration] = drawn
        return self.records[iteration]

    def _packed(self, info: Any, kind: int) -> list[np.ndarray]:
        assert self.draws is not None
        return self.draws.layout().pack(self.of(info.iteration))[kind]

    def graph(self, encoded: Any, **graph_args: Any) -> Any:
        """`build_graph` of the preset on `encoded` (call inside a pipeline definition)."""
        self.draws = Draws(
            fn.external_source(source=lambda info: self._packed(info, 0), batch=True,
                               batch_info=True, dtype=types.INT32, ndim=1),
            fn.external_source(source=lambda info: self._packed(info, 1), batch=True,
                               batch_info=True, dtype=types.FLOAT, ndim=1))
        return build_graph(encoded, self.preset, self.draws, **graph_args)
