"""The DALI backend: the rank's samples read through the shard set, fed to one DALI pipeline
(`loaders.dali_pipeline`: the preset as `augment.dali`'s graph), and a PyTorch iterator with the
loader contract (docs/architecture.md).

The loader builds its pipeline once, in the constructor, and feeds it for every epoch: no rebuild,
so resident memory stays flat over hundreds of epochs, and a machine where DALI cannot run (no
CUDA, nvJPEG, memory, a bad device) raises a `DaliSetupError` at once, before any sample is read
(`make_loader(backend="auto")` then falls back to the CPU backend). Each batch's samples are read
with `shardset.read_batch`, in the rank's delivery order (`EpochLoader.order()`: the same batches
as the CPU backend, whatever the thread count), their headers checked on the host (format,
128-Mpixel and byte limits, as on the CPU backend), their perturbations drawn on the host, and
their encoded bytes, labels, image shapes (from those headers: DALI cannot read a `.tiles`
header) and drawn values fed to `fn.external_source` (a short batch is padded by repeating its
last sample; the repeats are dropped after the run). A tiled set's images in local shard files
(a local set, or a remote one's cache) are read lazily: only the tiles each crop covers. Where
the preset starts by cutting a window (`decisions.window_steps`: `train`, `eval`), the loader
decodes each image's window itself (`WindowDecoder.decode`, on its threads) and feeds DALI those
pixels, so that the graph starts after the crop; for other presets it feeds small tickets
(`WindowDecoder.lend`) that the graph's window route decodes, from shard files kept open until
the run's outputs are taken. Up to `dali_pipeline.PREFETCH` runs are in
flight, and the feeds are prepared (read, checked, drawn, windows decoded) on a thread of their
own (`loaders.ahead`), up to `AHEAD` feeds ahead of DALI, so that the thread that iterates only
feeds DALI and takes its outputs: a training loop is not held up between its steps by the next
batch's preparation. Keys come from what was fed, so an error while running is blamed on the failed run's own
samples. Batches are handed out through `EpochLoader._delivering`, so `state_dict` /
`load_state_dict` resume mid-epoch exactly as on the CPU backend (same samples, same batches, on any
world size).

Remote shard sets are read like the CPU backend reads them: ranged reads through the storage layer,
or the shard set's local cache when `cache_dir` is given; DALI itself opens no file and no URL.

Hand-off to torch on a GPU: outputs are taken with `share_outputs(cuda_stream=<torch's current
stream>)`, which makes that stream wait (on the device, not the host) until DALI has produced them,
and binds the buffers to it; `torch.from_dlpack` then wraps them without a copy (DALI's `__dlpack__`
is given the same stream, so it needs no further wait). The default executor (`dali_pipeline.
EXECUTOR`) does not reuse an output buffer while anything references it, and a buffer bound to a
stream is freed in that stream's order: the memory stays valid for every kernel torch queues on its
stream, with no host synchronisation per batch. On the CPU (`device="cpu"`, `device_id=None`)
outputs are plain host arrays.

Perturbations are drawn on the host exactly as the CPU backend draws them: `decisions.draw_params`
with the generator of (seed, epoch, sample key) (`world.sample_rng`; (seed, key) for presets with
`per_sample_seed`), so a sample gets the same crop, degradation, rotation and flip on both
backends, whatever the batch, rank or thread count, and a resumed loader gives the batches an
uninterrupted one would. Even the Gaussian noise field is the CPU backend's: made on the host
for the samples that draw noise, fed with the draws.

DALI substitutions and limitations
----------------------------------
- **WebP re-compression** (`Compress` with `webp_fraction`): DALI has no WebP encoder, so a WebP
  draw is JPEG (`fn.jpeg_compression_distortion`) at the drawn quality. JPEG itself runs on the
  red/blue-swapped image, as OpenCV's encoder sees the reference's RGB: 0 levels from OpenCV.
- **Blur**: `fn.gaussian_blur` with the drawn kernel and OpenCV's sigma rule; within 1 level.
- **Noise**: the CPU backend's noise field (`augment.noise`), made on the host and fed; added in
  float32, clipped and truncated as on the CPU backend: exact.
- **Rot90 / Flip**: `fn.transpose` + `fn.flip`: exact, counter-clockwise turns as `torch.rot90`.
- **PadTo + Crop**: ROI decode of the part of the window inside the image
  (`fn.decoders.image_slice`); a window reaching past the image decodes the image's whole extent
  along that axis and mirrors it (reflect-101, centred): identical to pad-then-crop. JPEG windows
  are decoded by DALI's ROI decoder (libjpeg-turbo on the CPU, nvJPEG on a GPU); PNG, WebP and
  tiled images by `codecs.windows` through `fn.python_function` on CPU threads, on both devices
  (the rows above the crop's bottom only, as on the CPU backend). On a tiled set every image,
  JPEG included, goes through `codecs.windows`, which also mirrors its windows: the CPU
  backend's decoders, so both backends decode the same pixels (for `train` and `eval`, decoded
  by the loader before DALI, see above).
- **Resizing** (`SquareResize`, `ResizedCrop`): `fn.resize` without antialiasing; linear within 1
  level of OpenCV, cubic within 4 (another kernel), Lanczos-4 becomes Lanczos-3 (within 3).
- **Decoding**: EXIF orientation is ignored, as on the CPU backend. On the CPU, `eval` outputs are
  identical to the CPU backend's for JPEG, PNG and WebP (0 levels measured; tests/test_parity.py
  allows 1 level for JPEG). On a GPU, nvJPEG runs with `jpeg_fancy_upsampling=True` (the CPU's
  chroma upsampling) but may still differ by a few levels (not measured: no GPU here).
- **Faults**: a sample with unreadable members (truncated shard, missing `.labels`) or whose bytes
  are not an image, or exceed the size limits, raises a SampleError (a ValueError) naming shard and
  key before DALI sees it; an image DALI's decoders reject raises one naming the sample that a full
  CPU decode of the failed run's samples rejects. A corrupted JPEG or WebP payload that the decoders
  still decode passes as garbage pixels (CPU decoders behave alike; the formats carry no checksum):
  `imaginet-shards verify` checks shard checksums. `on_error="skip"` is not available
  (NotImplementedError; `backend="auto"` then uses the CPU backend): a DALI run cannot drop a
  sample from its batch after a failed decode.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from nvidia.dali.backend import TensorListCPU

from imaginet_shards.augment.dali import DrawLayout
from imaginet_shards.augment.decisions import window_steps
from imaginet_shards.codecs.windows import WindowDecoder
from imaginet_shards.errors import SampleError, ShardSetError
from imaginet_shards.format.tiles import RETILE_KEY
from imaginet_shards.io.shardset import ShardIndex, ShardSet, open_shard_set
from imaginet_shards.loaders.ahead import Ahead
from imaginet_shards.loaders.base import EpochLoader, LoaderConfig
from imaginet_shards.loaders.dali_faults import HINT, dali_reason, first_unusable
from imaginet_shards.loaders.dali_feed import Feeder, release
from imaginet_shards.loaders.dali_pipeline import (
    Feed,
    Runner,
    SupersededError,
    build_pipeline,
    device_ids,
    preset_graph,
)
from imaginet_shards.loaders.world import RankOrder

AHEAD = 1  # feeds prepared ahead of the one DALI takes next, on the feeding thread


class DaliBatch(NamedTuple):
    """A batch with its sample keys and the values drawn for its samples that the graph executed,
    by name (see `decisions.draw_params`; 0 where a sample did not draw that value)."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    decisions: dict[str, torch.Tensor]


def _host(tensor_list: Any) -> torch.Tensor:
    return torch.from_numpy(tensor_list.as_array())


def _on_device(tensor_list: Any, device: torch.device) -> torch.Tensor:
    """A dense DALI output as a torch tensor on `device`: host arrays moved there, GPU outputs
    wrapped without a copy (on torch's current stream, which the outputs are bound to)."""
    if isinstance(tensor_list, TensorListCPU):
        return _host(tensor_list).to(device)
    with torch.cuda.device(device):
        return torch.from_dlpack(tensor_list.as_tensor())


class DaliLoader(EpochLoader):
    """Iterates (images float32 [N,3,S,S] normalised, labels int64 [N,4]) on `config.device`.

    `len()` is the batch count of every rank; `set_epoch` moves to another epoch's order;
    `batches()` also yields keys and per-sample decisions. Builds its DALI pipeline at once
    (DaliSetupError when DALI cannot run on `config.device`).
    """

    def __init__(self, shards: ShardSet, config: LoaderConfig):
        if config.on_error != "raise":
            raise NotImplementedError("the DALI backend cannot skip unusable samples "
                                      "(on_error='skip'); use backend='cpu'")
        tiled = RETILE_KEY in shards.manifest.options
        if device_ids(config.device)[1] != "cpu" and tiled:
            raise NotImplementedError("a tiled shard set decodes through windows.py on the CPU: "
                                      "DALI reads it with device='cpu' only; use backend='cpu'")
        super().__init__(shards, config)
        self._indexes: dict[int, ShardIndex] = {}
        # the pipeline and its window decoder (a thread pool) live as long as the loader
        self._windows = WindowDecoder(max(config.workers, 1), tiled=tiled)
        # A tiled set's windows are decoded here, where the preset's leading steps cut them: the
        # graph then starts after those steps (else it decodes them through the window route).
        self._window = window_steps(config.preset.steps) if tiled else 0
        self._runner: Runner | None = None
        self._ahead: Ahead[Feed] | None = None  # the epoch's feeds, prepared on a thread
        try:
            self._start()
        except BaseException:
            self._windows.close()
            raise

    def _start(self) -> Runner:
        c = self.config
        windowed = self._window > 0
        pipe, layout = build_pipeline(preset_graph(c.preset, self._windows, windowed), c.device,
                                      c.batch_size, max(c.workers, 1), shapes=not windowed,
                                      windowed=windowed)
        self._runner = Runner(pipe, layout)
        return self._runner

    def close(self) -> None:
        self._stop_feeding()
        self._stop()
        self._windows.close()
        super().close()

    def _stop(self) -> None:
        """Stop the pipeline (DALI stops its threads) and release what its runs were fed."""
        if self._runner is not None:
            self._runner.close()
        self._runner = None

    def batches(self) -> Iterator[DaliBatch]:
        """The rest of the epoch's batches (all of them unless a state was loaded) with their keys
        and decisions."""
        return self._delivering(self._batches())

    def _batches(self) -> Iterator[DaliBatch]:
        order, device = self.order(), torch.device(self.config.device)
        runner = self._runner or self._start()
        starts = np.flatnonzero(np.diff(order.shards, prepend=-1))  # where each shard's run starts
        self.shards.prefetch(list(dict.fromkeys(  # a remote set's cache fills ahead of use
            self.shards.manifest.shards[int(order.shards[i])].name for i in starts)))
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._stop_feeding()  # an earlier iteration left early: its feeds were never fed
        feeder = Feeder(self.shards, self._indexes, self._windows, self._window, self.config,
                        runner.layout)
        feeds = self._ahead = Ahead(feeder.feeds(order), AHEAD, release, "imaginet-dali-feed")
        try:
            yield from self._run(order, runner, feeds, device, stream)
        finally:  # this iteration's own feeds: a later one may have started meanwhile
            feeds.close()
            if self._ahead is feeds:
                self._ahead = None

    def _stop_feeding(self) -> None:
        """Stop preparing the current iteration's feeds, releasing those prepared and not fed."""
        if self._ahead is not None:
            self._ahead.close()
        self._ahead = None

    def _run(self, order: RankOrder, runner: Runner, feeds: Iterator[Feed], device: torch.device,
             stream: Any) -> Iterator[DaliBatch]:
        runs = runner.run(feeds, stream)
        for number, size in enumerate(order.batch_sizes):
            if size == 0:  # a rank of a tiny set: empty batches (see world.py)
                yield self._empty(device)
                continue
            try:
                taken = next(runs, None)
            except SupersededError:
                raise
            except RuntimeError as exc:  # DALI failed while running: blame the run's samples
                raise self._failure(str(exc), runner) from exc
            if taken is None or taken[0].tag[0] != number:
                raise RuntimeError(f"the DALI runs and the order disagree at batch {number}")
            yield self._batch(*taken, device, runner.layout)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            yield batch.images, batch.labels

    def _batch(self, feed: Feed, outputs: list, device: torch.device, layout: DrawLayout
               ) -> DaliBatch:
        images, labels = outputs
        n, records = feed.real, feed.tag[1]
        decisions = {}
        if layout.ints:
            columns = torch.from_numpy(np.array(feed.draws[0][:n], dtype=np.int32))
            decisions = {name: columns[:, i] for i, name in enumerate(layout.ints)}
        return DaliBatch(_on_device(images, device)[:n], _on_device(labels, device)[:n].long(),
                         [r.key for r in records], decisions)

    def _failure(self, message: str, runner: Runner) -> SampleError | ShardSetError:
        """A SampleError naming the sample of the failed run (the oldest in flight) that a CPU
        decode rejects, else a ShardSetError quoting DALI. The pipeline is rebuilt on next use."""
        feeds = runner.in_flight()
        reason = dali_reason(message)
        records = list(feeds[0].tag[1]) if feeds and feeds[0].real else []
        # windows the loader decoded itself were decoded cleanly, from files since closed
        found = None if self._window else first_unusable(records)
        self._stop()
        if found is not None:
            shard, key, cause = found
            return SampleError(shard, key, f"{cause} (DALI: {reason})", HINT)
        keys = ", ".join(f"{r.shard}:{r.key}" for r in records) or "unknown samples"
        return ShardSetError(self.shards.root, f"DALI failed on a batch of {keys}: {reason}",
                             "no sample of it fails a CPU decode; `imaginet-shards verify --decode` "
                             "checks every sample")

    def _empty(self, device: torch.device) -> DaliBatch:
        size = self.config.preset.size
        return DaliBatch(torch.empty((0, 3, size, size), device=device),
                         torch.empty((0, 4), dtype=torch.int64, device=device), [], {})


def make_dali_loader(source: str | os.PathLike, config: LoaderConfig) -> DaliLoader:
    """The DALI backend over the shard set at `source` (directory, manifest path or URL)."""
    shards = open_shard_set(str(source), config.cache_dir, config.cache_bytes)
    try:
        return DaliLoader(shards, config)
    except BaseException:
        shards.close()
        raise
