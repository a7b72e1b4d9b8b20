"""The DALI backend's one pipeline: built once per loader, fed batch by batch, run a few batches
ahead.

`build_pipeline` makes the pipeline (encoded bytes, labels and each sample's drawn values from
`fn.external_source`, the preset as `augment.dali.build_graph`) and builds it at once, so that a
CUDA, nvJPEG, memory or device problem surfaces as a `DaliSetupError` before anything is read.
`Runner` feeds it the batches of an epoch and hands their outputs back in order, keeping up to
`depth` runs in flight; it lives as long as the loader, across epochs.

Executor: `EXECUTOR` asks for DALI's default ("dynamic") executor explicitly, in this one place,
because three things depend on it: on a GPU the graph feeds the shapes of GPU images into CPU
arithmetic (windows, mirroring: `.shape()` of GPU data), which only that executor runs; binding
outputs to a CUDA stream (`share_outputs(cuda_stream=...)`, the hand-off in `loaders.dali`) works
only with it; and it keeps an output's buffer alive as long as anything references it, which the
zero-copy hand-off to torch relies on. (`fn.python_function`, the PNG/WebP window route, also runs
under it.)
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from imaginet_shards.augment.dali import DrawLayout, Draws, build_graph
from imaginet_shards.augment.dali_decode import Decoder, decoder_arguments
from imaginet_shards.augment.spec import Preset
from imaginet_shards.codecs.windows import WindowDecoder
from imaginet_shards.errors import DaliSetupError

# The default executor, named so that nobody turns it off by passing another flag: see above.
EXECUTOR: dict[str, Any] = {"exec_async": True, "exec_pipelined": True, "exec_dynamic": True}
ENCODED, LABELS, SHAPES = "encoded", "labels", "shapes"  # the external sources' names
DRAWN, NOISE = "drawn", "noise"
PREFETCH = 2  # runs DALI works on ahead of the one handed out


def device_ids(device: str) -> tuple[int | None, str]:
    """(DALI device_id, decoder device) for a torch device string: (None, "cpu") or (n, "mixed")."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return None, "cpu"
    if parsed.type == "cuda":
        if parsed.index is not None:
            return parsed.index, "mixed"
        if not torch.cuda.is_available():
            raise DaliSetupError(device, "CUDA is not available")
        return torch.cuda.current_device(), "mixed"
    raise ValueError(f"the DALI backend runs on 'cpu' or 'cuda[:n]', not {device!r}")


Batch = Sequence[np.ndarray] | np.ndarray  # a batch for `feed_input`: its samples, or stacked
DrawnValues = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]  # (int32 vectors, noise fields)
Graph = Callable[[Any, Any, Draws, str], Any]  # (encoded, shapes, draws, decode device) -> images


def preset_graph(preset: Preset, windows: WindowDecoder | None, windowed: bool = False) -> Graph:
    """The graph of the loader: `preset` on the encoded images, or with `windowed` on the decoded
    windows of its leading steps (see `augment.dali.build_graph`)."""
    return lambda encoded, shapes, draws, decode_device: build_graph(
        encoded, preset, draws, decode_device, windows, shapes=shapes, windowed=windowed)


def decode_graph(preset: Preset) -> Graph:
    """Whole images through the decoder that `preset`'s loader uses (the graph's own `Decoder`,
    arguments and all), nothing after it: what the decode-only benchmark times."""
    def graph(encoded: Any, shapes: Any, draws: Draws, decode_device: str) -> Any:
        decoder = Decoder(decode_device, None, decoder_arguments(preset, decode_device))
        return decoder.pixels(decoder.encoded_view(encoded))
    return graph


def build_pipeline(graph: Graph, device: str, batch_size: int, threads: int,
                   depth: int = PREFETCH, shapes: bool = False, windowed: bool = False
                   ) -> tuple[Pipeline, DrawLayout]:
    """A built pipeline running `graph` on fed batches (outputs: the graph's images and the fed
    labels) and the layout of the drawn values every feed gives (`Feed.draws`, packed by
    `DrawLayout.pack`). With `shapes`, every feed also gives the images' shapes (`Feed.shapes`),
    which the graph then takes instead of reading them from the encoded bytes. With `windowed`,
    the feeds' images are decoded HWC uint8 windows (see `preset_graph`), not encoded bytes. Raises
    DaliSetupError (naming the device and DALI's message) when DALI cannot build it here."""
    device_id, decode_device = device_ids(device)
    drawn: list[Draws] = []

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        # On the CPU device DALI reads the fed bytes in place (`Runner` keeps them alive); a GPU
        # pipeline copies them, as it always has (reading them in place is not checked there).
        encoded = fn.external_source(name=ENCODED, dtype=types.UINT8, ndim=3 if windowed else 1,
                                     layout="HWC" if windowed else None, no_copy=device_id is None)
        labels = fn.external_source(name=LABELS, dtype=types.INT32, ndim=1)
        fed = fn.external_source(name=SHAPES, dtype=types.INT32, ndim=1) if shapes else None
        draws = Draws(fn.external_source(name=DRAWN, dtype=types.INT32, ndim=1),
                      fn.external_source(name=NOISE, dtype=types.FLOAT, ndim=3, layout="HWC"))
        drawn.append(draws)  # DALI drops a source the graph does not read: see Runner._feed
        return graph(encoded, fed, draws, decode_device), labels

    try:
        pipe = pipeline(batch_size=batch_size, num_threads=threads, device_id=device_id,
                        seed=0, prefetch_queue_depth=depth, **EXECUTOR)  # nothing random in it
        pipe.build()
    except RuntimeError as exc:
        raise DaliSetupError(device, str(exc).strip()) from exc
    return pipe, drawn[0].layout()


class SupersededError(RuntimeError):
    """An epoch's iteration was resumed after a later one had started on the same pipeline."""


@dataclass(frozen=True)
class Feed:
    """One run's input: encoded images (or decoded windows), labels, the drawn values (int32
    vectors and noise fields) and, for a pipeline built with `shapes`, the images' int32 (height,
    width, 3) shapes (see `build_pipeline`), all padded to the pipeline's batch size; how many
    samples are real, what the caller wants back with the outputs (`tag`; it stays referenced
    while the run is in flight) and what to call once the run is over (`release`, e.g. closing
    the files its images are read from)."""

    encoded: Batch
    labels: Batch
    real: int
    tag: Any = None
    shapes: Batch | None = None
    release: Callable[[], None] | None = None
    draws: tuple[Batch, Batch] = ((), ())


def padded(encoded: Sequence[bytes | np.ndarray], labels: Sequence[np.ndarray], batch_size: int,
           tag: Any = None, shapes: Sequence[np.ndarray] | None = None,
           release: Callable[[], None] | None = None, draws: DrawnValues = ((), ())) -> Feed:
    """A Feed of 1..batch_size samples, the last repeated up to `batch_size` (a run's outputs for
    the repeats are dropped)."""
    count = len(encoded)
    if (not 0 < count <= batch_size or len(labels) != count
            or any(len(values) not in (0, count) for values in draws)
            or (shapes is not None and len(shapes) != count)):
        raise ValueError(f"a run takes 1..{batch_size} samples with labels and draws (and shapes, "
                         f"if any), got {count}")
    extra = batch_size - count

    def filled(items: Sequence[np.ndarray]) -> Batch:
        """The items, the last repeated `extra` times, stacked when they have one shape (DALI
        takes a stacked batch without checking each sample in Python)."""
        items = list(items) + list(items[-1:]) * extra
        return np.stack(items) if len({item.shape for item in items}) == 1 else items

    return Feed(filled([data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
                        for data in encoded]),
                filled([np.asarray(label, dtype=np.int32) for label in labels]), count, tag,
                None if shapes is None else filled([np.asarray(s, dtype=np.int32) for s in shapes]),
                release, (filled(draws[0]), filled(draws[1])))


class Runner:
    """Runs a built pipeline over fed batches, up to `depth` ahead, for the pipeline's life.

    DALI's first `schedule_run` starts `depth` runs at once (each consuming one fed batch), later
    calls one each; `run` keeps that count. Runs left in flight by an abandoned epoch are drained
    (their outputs dropped) when the next one starts.

    A CPU pipeline reads the fed bytes in place, so a feed stays referenced here until its run's
    outputs are taken, and is then released (`Feed.release`); the runner is the pipeline's only
    owner and releases it first (`pipe` is its first attribute; a cyclic collection finalises the
    pipeline before clearing anything), so DALI shuts down before the feeds of runs still in
    flight are freed. `close` does the same explicitly and releases those feeds too.
    """

    def __init__(self, pipe: Pipeline, layout: DrawLayout | None = None, depth: int = PREFETCH):
        self.pipe, self.depth = pipe, depth  # `pipe` first: see above
        self.layout = layout or DrawLayout()
        self._primed = False
        self._in_flight: deque[Feed] = deque()
        self._generation = 0

    def _feed(self, feed: Feed) -> None:
        self.pipe.feed_input(ENCODED, feed.encoded)
        self.pipe.feed_input(LABELS, feed.labels)
        if feed.shapes is not None:
            self.pipe.feed_input(SHAPES, feed.shapes)
        if self.layout.ints:  # DALI drops a source the graph does not read
            self.pipe.feed_input(DRAWN, feed.draws[0])
        if self.layout.noise:
            self.pipe.feed_input(NOISE, feed.draws[1])
        self._in_flight.append(feed)

    def _schedule(self, feeds: Iterator[Feed]) -> None:
        """Feed and start runs until `depth` are in flight or `feeds` is exhausted."""
        if not self._primed:
            first = [feed for _, feed in zip(range(self.depth), feeds)]
            if not first:
                return
            while len(first) < self.depth:  # DALI's first call starts `depth` runs: pad with
                last = first[-1]  # runs of no samples, of the same data: the last pad releases it
                first[-1] = replace(last, release=None)
                first.append(replace(last, real=0))
            for feed in first:
                self._feed(feed)
            self.pipe.schedule_run()
            self._primed = True
        while len(self._in_flight) < self.depth:
            following = next(feeds, None)
            if following is None:
                return
            self._feed(following)
            self.pipe.schedule_run()

    def _take(self, stream: Any) -> tuple[Feed, list]:
        """The oldest run's feed and outputs (bound to `stream` on a GPU, see `loaders.dali`)."""
        feed = self._in_flight[0]
        outputs = self.pipe.share_outputs(cuda_stream=stream)
        self._in_flight.popleft()
        self.pipe.release_outputs()  # the default executor keeps `outputs` valid after this
        if feed.release is not None:
            feed.release()
        return feed, outputs

    def close(self) -> None:
        """Stop the pipeline (drop this runner's reference: DALI stops when it was the last),
        then release the feeds of the runs it left in flight. The runner cannot run again."""
        del self.pipe
        while self._in_flight:
            feed = self._in_flight.popleft()
            if feed.release is not None:
                feed.release()

    def in_flight(self) -> tuple[Feed, ...]:
        """The feeds of the runs started and not yet handed back (oldest first)."""
        return tuple(self._in_flight)

    def run(self, feeds: Iterable[Feed], stream: Any = None) -> Iterator[tuple[Feed, list]]:
        """(feed, outputs) of every feed with real samples, in order. A failed run raises DALI's
        RuntimeError; `in_flight()` then starts with the failed run's feed."""
        self._generation += 1
        generation = self._generation
        while self._in_flight:  # an earlier epoch stopped early: drop what it left running
            self._take(stream)
        feeds = iter(feeds)
        self._schedule(feeds)
        while True:
            if generation != self._generation:
                raise SupersededError("the DALI loader started another iteration while this one "
                                      "was running; iterate one epoch at a time")
            if not self._in_flight:
                return
            feed, outputs = self._take(stream)
            self._schedule(feeds)
            if feed.real:
                yield feed, outputs
