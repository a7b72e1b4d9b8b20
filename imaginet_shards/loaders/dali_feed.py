"""The DALI loader's feeds (`dali_pipeline.Feed`): each batch's samples read and checked, their
perturbations drawn on the host and, where the loader decodes a tiled set's windows itself, those
windows decoded.

The feeds are prepared on a thread of their own (`loaders.ahead`), so nothing here refers to the
pipeline: when a process forks while that thread is alive, the child drops the thread's objects,
and finalising a DALI pipeline there would wait for threads that do not exist in the child.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from imaginet_shards.augment.dali import DrawLayout, host_draws
from imaginet_shards.augment.dali_nodes import SampleDraws
from imaginet_shards.codecs.windows import WindowDecoder
from imaginet_shards.errors import SampleError
from imaginet_shards.io.shardset import Record, ShardFiles, ShardIndex, ShardSet, read_batch
from imaginet_shards.loaders.base import LoaderConfig
from imaginet_shards.loaders.dali_faults import HINT, check_batch
from imaginet_shards.loaders.dali_pipeline import Feed, padded
from imaginet_shards.loaders.world import RankOrder, sample_rng


def draw(config: LoaderConfig, record: Record, shape: np.ndarray, noise: bool, window: int
         ) -> SampleDraws:
    """`host_draws` for `record`'s image of `shape`, with the CPU backend's generator; a
    SampleError when the preset cannot apply to it."""
    epoch = None if config.preset.per_sample_seed else config.epoch
    try:
        return host_draws(config.preset, sample_rng(config.seed, record.key, epoch),
                          int(shape[0]), int(shape[1]), noise, window)
    except ValueError as exc:
        raise SampleError(record.shard, record.key, str(exc), HINT) from exc


def release(feed: Feed) -> None:
    """Release what a feed that was never fed holds (its shard files)."""
    if feed.release is not None:
        feed.release()


@dataclass(frozen=True)
class Feeder:
    """Makes an epoch's feeds for a pipeline whose graph reads `layout`. `window`: how many of the
    preset's leading steps cut the window that is decoded here (`decisions.window_steps`; 0: the
    graph decodes the images). `indexes` is the loader's cache of shard indexes, filled as shards
    are first read."""

    shards: ShardSet
    indexes: dict[int, ShardIndex]
    windows: WindowDecoder
    window: int
    config: LoaderConfig
    layout: DrawLayout

    def feeds(self, order: RankOrder) -> Iterator[Feed]:
        """The runs of the epoch's non-empty batches: their samples read and checked, their
        perturbations drawn on the host. A tiled set's images in local shard files are read
        lazily (only their covering tiles) from files open until the windows are decoded here
        (`window`), or else until the run is over, fed as tickets (`WindowDecoder.lend`)."""
        tiled, config = self.windows.tiled, self.config
        for number in range(len(order)):
            shard_ids, samples = order.batch(number)
            if len(samples) == 0:
                continue
            files = ShardFiles(self.shards) if tiled else None
            try:
                records = read_batch(self.shards, self.indexes, shard_ids, samples, files)
                labels, shapes = check_batch(records)
                drawn = [draw(config, r, shape, self.layout.noise, self.window)
                         for r, shape in zip(records, shapes)]
                draws = self.layout.pack([d.record for d in drawn], [d.field for d in drawn])
                if self.window:
                    windows = self.decoded(records, shapes, drawn)
            except BaseException:
                if files is not None:
                    files.close()
                raise
            if self.window:
                assert files is not None
                files.close()
                yield padded(windows, labels, config.batch_size, (number, records), None, None,
                             draws)
                continue
            encoded = [r.image if r.tiled is None else self.windows.lend(r.tiled) for r in records]
            yield padded(encoded, labels, config.batch_size, (number, records), shapes,
                         None if files is None else files.close, draws)

    def decoded(self, records: list[Record], shapes: list[np.ndarray], drawn: list[SampleDraws]
                ) -> list[np.ndarray]:
        """The pixels of each record's window (`SampleDraws.window`), decoded on the window
        decoder's threads; a SampleError naming the first sample (in shard order) that failed."""
        windows = []
        for sample in drawn:
            assert sample.window is not None  # drawn with `self.window`
            windows.append((sample.window.top, sample.window.left, sample.window.height,
                            sample.window.width))
        found = self.windows.decode([r.image if r.tiled is None else r.tiled for r in records],
                                    windows, [(int(s[0]), int(s[1])) for s in shapes])
        bad = [(r.shard, r.key, str(f)) for r, f in zip(records, found) if isinstance(f, ValueError)]
        if bad:
            shard, key, reason = min(bad)
            raise SampleError(shard, key, f"corrupt image: {reason}", HINT)
        return [f for f in found if not isinstance(f, ValueError)]
