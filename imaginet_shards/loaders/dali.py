"""The DALI backend: `fn.readers.webdataset` over our shards, the preset as a DALI graph
(`augment.dali`), and a PyTorch iterator with the loader contract (docs/architecture.md).

Each epoch (`__iter__`) builds one pipeline for this rank. `world.worker_plan` says which samples
the rank reads (the same partition as the CPU backend: contiguous ranges of the (seed, epoch) shard
order, equal batch counts on every rank); the loader writes, for each shard segment, a DALI index
holding only that segment's lines (the index offsets are absolute, so DALI reads exactly those
samples) and hands the reader those indexes in the epoch's shard order with `num_shards=1`. The
reader's shuffle buffer (`initial_fill=shuffle_buffer`) and every random draw are seeded by
(seed, epoch, rank): the same arguments give the same batches. The tar paths are the shard set's own
locations, so `s3://` shard sets are read by DALI directly (indexes are always local files).

On a GPU (`device="cuda[:n]"`) the decoder runs as `"mixed"` (nvJPEG for JPEG, CPU threads for PNG
and WebP) and every later operator on the GPU; on the CPU the same graph runs with
`device_id=None`.

DALI substitutions and limitations
----------------------------------
- **WebP re-compression** (`Compress` with `webp_fraction`): DALI has no WebP encoder, so a WebP
  draw is JPEG (`fn.jpeg_compression_distortion`) at the drawn quality. JPEG itself runs on the
  red/blue-swapped image, as OpenCV's encoder sees the reference's RGB: 0 levels from OpenCV.
- **Blur**: `fn.gaussian_blur` with the drawn kernel and OpenCV's sigma rule; within 1 level.
- **Noise**: `fn.noise.gaussian` with stddev sqrt(variance) and mean -0.5, rounded and saturated
  to uint8 (the reference truncates).
- **Rot90 / Flip**: `fn.transpose` + `fn.flip`: exact, counter-clockwise turns as `torch.rot90`.
- **PadTo + Crop**: ROI decode of the part of the window inside the image
  (`fn.decoders.image_slice`); a window reaching past the image decodes the image's whole extent
  along that axis and mirrors it (reflect-101, centred): identical to pad-then-crop. Only JPEG
  decodes just the window (libjpeg-turbo on the CPU, nvJPEG on a GPU); PNG and WebP
  (nvImageCodec's OpenCV decoders) decode the whole image, as on the CPU backend.
- **Resizing** (`SquareResize`, `ResizedCrop`): `fn.resize` without antialiasing; linear within 1
  level of OpenCV, cubic within 4 (another kernel), Lanczos-4 becomes Lanczos-3 (within 3).
- **Decoding**: EXIF orientation is ignored, as on the CPU backend. On the CPU, `eval` outputs are
  identical to the CPU backend's for JPEG, PNG and WebP (0 levels measured; tests/test_parity.py
  allows 1 level for JPEG). On a GPU, nvJPEG runs with `jpeg_fancy_upsampling=True` (the CPU's
  chroma upsampling) but may still differ by a few levels (not measured: no GPU here).
- **Random draws** come from DALI's generators, not `world.sample_rng`: rates and ranges follow the
  spec, but a sample's draws depend on the rank's seed and its position in the stream, not on its
  key. Presets with `per_sample_seed` (`social`) are therefore refused (NotImplementedError): build
  the social test set with `imaginet-shards perturb` (CPU).
- **Faults**: a truncated shard (checked against the index before DALI reads it: DALI would crash
  on a member cut by the end of the file), a missing `.labels` member and an image the decoders
  reject raise a SampleError (a ValueError) naming the shard and the sample key. A corrupted JPEG or WebP payload
  that libjpeg-turbo/libwebp still decode passes as garbage pixels (CPU decoders behave alike; the
  formats carry no checksum): `imaginet-shards verify` checks shard checksums. DALI has no
  decompression-bomb limit; the packer refuses such images. `on_error="skip"` is not available
  (NotImplementedError; `backend="auto"` then falls back to the CPU backend): a DALI pipeline
  cannot drop a sample from a batch after a failed decode.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.backend import TensorListCPU
from nvidia.dali.pipeline import Pipeline

from imaginet_shards.augment.dali import build_graph, outputs
from imaginet_shards.codecs.windows import WindowDecoder
from imaginet_shards.errors import SampleError, ShardSetError
from imaginet_shards.format.images import IMAGE_MEMBERS
from imaginet_shards.format.tar import INDEX_VERSION, format_index_line
from imaginet_shards.format.tiles import RETILE_KEY
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import ShardIndex, ShardSet, load_index, open_shard_set
from imaginet_shards.loaders.base import EpochLoader, LoaderConfig
from imaginet_shards.loaders.dali_faults import check_complete, dali_reason, describe_failure, find_unusable
from imaginet_shards.loaders.world import EpochSpec, WorkerPlan, derive_seed, worker_plan

log = logging.getLogger(__name__)

PREFETCH = 2  # batches DALI prepares ahead
IMAGE_EXTENSIONS = ";".join(IMAGE_MEMBERS)  # the reader's "any of these" component


class DaliBatch(NamedTuple):
    """A batch with its sample keys and the per-sample decisions of the preset's top-level steps
    (see `augment.dali.build_graph` for names and values)."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    decisions: dict[str, torch.Tensor]


@dataclass(frozen=True)
class EpochFiles:
    """What the reader reads this epoch: tar locations and their segment index files, in order,
    and for each index file (by stem) its shard's index and first sample (to name failures)."""

    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    segments: dict[str, tuple[ShardIndex, int]]


def segment_index(index: ShardIndex, start: int, stop: int) -> str:
    """A DALI v1.2 index listing only samples [start, stop) of a shard (offsets stay absolute)."""
    lines = "".join(format_index_line(entries) + "\n" for entries in index.samples[start:stop])
    return f"{INDEX_VERSION} {stop - start}\n{lines}"


def device_ids(device: str) -> tuple[int | None, str]:
    """(DALI device_id, decoder device) for a torch device string: (None, "cpu") or (n, "mixed")."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return None, "cpu"
    if parsed.type == "cuda":
        return (torch.cuda.current_device() if parsed.index is None else parsed.index), "mixed"
    raise ValueError(f"the DALI backend runs on 'cpu' or 'cuda[:n]', not {device!r}")


def _pipeline_seed(config: LoaderConfig, epoch: int) -> int:
    return int(derive_seed("dali", config.seed, epoch, config.rank).generate_state(1)[0])


def build_pipeline(files: EpochFiles, config: LoaderConfig, epoch: int, depth: int = 2,
                   windows: WindowDecoder | None = None) -> tuple[Pipeline, tuple[str, ...]]:
    """The epoch's pipeline (outputs: images, labels, source info, decisions; `depth` batches
    prefetched) and the decision names; `windows` decodes PNG/WebP crops on the CPU."""
    device_id, decode_device = device_ids(config.device)
    shuffle = config.shuffle and config.shuffle_buffer > 1
    names: list[str] = []

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        encoded, labels = outputs(fn.readers.webdataset(
            paths=list(files.tars), index_paths=list(files.indexes),
            ext=[IMAGE_EXTENSIONS, "labels"],
            dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
            random_shuffle=shuffle, initial_fill=max(config.shuffle_buffer, 1),
            pad_last_batch=True), 2)
        images, decisions = build_graph(encoded, config.preset, decode_device, windows)
        names.extend(decisions)
        return (images, labels, fn.get_property(encoded, key="source_info"), *decisions.values())

    pipe = pipeline(batch_size=config.batch_size, num_threads=max(config.workers, 1),
                    device_id=device_id, seed=_pipeline_seed(config, epoch),
                    prefetch_queue_depth=depth)
    return pipe, tuple(names)


def write_epoch_files(shards: ShardSet, plan: WorkerPlan, indexes: dict[int, ShardIndex],
                      folder: Path) -> EpochFiles:
    """Check that each shard of `plan` holds its segment's bytes, write the segment's index into
    `folder` (named after the shard, which a plan visits once, so DALI's index errors name it),
    and return what the reader reads. The one place that maps a shard set to reader paths: tars
    are read where the shard set is (a directory or an s3:// URL) or from the local cache
    (filled ahead of use), indexes are always local."""
    tars, paths, segments = [], [], {}
    shards.prefetch([shards.manifest.shards[s.shard].name for s in plan.segments])
    for segment in plan.segments:
        entry = shards.manifest.shards[segment.shard]
        if segment.shard not in indexes:
            indexes[segment.shard] = load_index(shards, entry)
        index = indexes[segment.shard]
        check_complete(shards, index, segment.start, segment.stop)
        path = folder / (Path(entry.name).stem + ".idx")
        path.write_text(segment_index(index, segment.start, segment.stop))
        tars.append(shards.local_path(entry.name))
        paths.append(str(path))
        segments[path.stem] = (index, segment.start)
    return EpochFiles(tuple(tars), tuple(paths), segments)


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList (CPU or GPU) as a torch tensor on `device`."""
    if isinstance(tensor_list, TensorListCPU):
        return torch.from_numpy(tensor_list.as_array()).to(device)
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    dense = tensor_list.as_tensor()
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
    return out


def _key(source_info: np.ndarray) -> str:
    """'…/NAME.tar:OFFSET:KEY.ext' -> KEY."""
    return bytes(source_info).decode().rsplit(":", 1)[-1].split(".", 1)[0]


class DaliLoader(EpochLoader):
    """Iterates (images float32 [N,3,S,S] normalised, labels int64 [N,4]) on `config.device`.

    `len()` is the batch count of every rank (`world.batches_per_rank`); `set_epoch` reshuffles;
    `batches()` also yields keys and per-sample decisions.
    """

    def __init__(self, shards: ShardSet, config: LoaderConfig):
        if config.on_error != "raise":
            raise NotImplementedError("the DALI backend cannot skip unusable samples "
                                      "(on_error='skip'); use backend='cpu'")
        if config.preset.per_sample_seed:
            raise NotImplementedError(f"preset {config.preset.name!r} needs per-sample seeds, which "
                                      "DALI's generators cannot key by sample; use backend='cpu'")
        tiled = RETILE_KEY in shards.manifest.options
        if device_ids(config.device)[1] != "cpu" and tiled:
            raise NotImplementedError("a tiled shard set decodes through windows.py on the CPU: "
                                      "DALI reads it with device='cpu' only; use backend='cpu'")
        super().__init__(shards, config)
        self._indexes: dict[int, ShardIndex] = {}
        # one window decoder (and thread pool) for the loader's life, not one per epoch's pipeline
        self._windows = WindowDecoder(max(config.workers, 1), tiled=tiled)

    def close(self) -> None:
        self._windows.close()
        super().close()

    def plan(self) -> WorkerPlan:
        """This rank's samples and batch sizes for the current epoch (one DALI "worker")."""
        c = self.config
        spec = EpochSpec(c.world_size, c.rank, c.batch_size, c.seed, c.epoch, c.drop_last, c.shuffle)
        return worker_plan(self.shards.counts, spec, 1, 0)

    def batches(self) -> Iterator[DaliBatch]:
        """The epoch's batches with their keys and decisions."""
        plan, epoch = self.plan(), self.config.epoch
        device = torch.device(self.config.device)
        if plan.samples == 0:  # a rank of a tiny set: only empty batches (see world.py)
            for _ in plan.batch_sizes:
                yield self._empty(device)
            return
        folder = Path(tempfile.mkdtemp(prefix="imaginet-dali-"))
        stream = None
        try:
            files = write_epoch_files(self.shards, plan, self._indexes, folder)
            stream = self._run(files, plan, epoch, device)
            yield from _rebatch(stream, plan.batch_sizes)
        finally:
            if stream is not None:
                stream.close()  # releases the pipeline and its threads
            shutil.rmtree(folder, ignore_errors=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.batches():
            yield batch.images, batch.labels

    def _run(self, files: EpochFiles, plan: WorkerPlan, epoch: int, device: torch.device
             ) -> Generator[DaliBatch, None, None]:
        """The epoch's DALI batches, just enough for the plan's samples. Runs are scheduled by hand
        so that prefetching stops at the epoch's end (DALI's `run()` would decode up to a queue's
        worth of the next epoch). DALI errors become SampleErrors naming the shard and sample."""
        runs = -(-plan.samples // self.config.batch_size)
        done = 0
        try:
            pipe, names = build_pipeline(files, self.config, epoch, depth=min(PREFETCH, runs),
                                         windows=self._windows)
            scheduled = 0
            while done < runs:
                if scheduled < runs:
                    pipe.schedule_run()  # the first call queues `depth` runs
                    scheduled += min(PREFETCH, runs) if scheduled == 0 else 1
                images, labels, info, *decisions = pipe.share_outputs()
                cpu = torch.device("cpu")
                batch = DaliBatch(_to_torch(images, device), _to_torch(labels, device).long(),
                                  [_key(info.at(i)) for i in range(len(info))],
                                  {n: _to_torch(d, cpu) for n, d in zip(names, decisions)})
                pipe.release_outputs()
                done += 1
                yield batch
        except RuntimeError as exc:
            raise self._failure(str(exc), files, plan, done) from exc

    def _failure(self, message: str, files: EpochFiles, plan: WorkerPlan, done: int
                 ) -> SampleError | ShardSetError:
        """A SampleError naming the shard and sample of a DALI failure during run `done`, or a
        ShardSetError when no sample can be blamed."""
        reason = dali_reason(message)
        hint = "DALI backend; to skip unusable samples use backend='cpu' with on_error='skip'"
        where = describe_failure(message, files.segments)
        if where is not None:
            return SampleError(*where, reason, hint)
        limit = (done + PREFETCH + 1) * self.config.batch_size + self.config.shuffle_buffer
        found = find_unusable(self.shards, plan, self._indexes, limit)  # what DALI may have read
        if found is not None:
            shard, key, cause = found
            return SampleError(shard, key, f"{cause} (DALI: {reason})", hint)
        return ShardSetError(self.shards.root, f"DALI failed: {reason}",
                             "no sample could be blamed; `imaginet-shards verify --decode` checks "
                             "every sample")

    def _empty(self, device: torch.device) -> DaliBatch:
        size = self.config.preset.size
        return DaliBatch(torch.empty((0, 3, size, size), device=device),
                         torch.empty((0, 4), dtype=torch.int64, device=device), [], {})


def _rebatch(batches: Iterator[DaliBatch], sizes: tuple[int, ...]) -> Iterator[DaliBatch]:
    """Cut a stream of batches into batches of `sizes` (the padding after the last is dropped)."""
    pending: DaliBatch | None = None
    for size in sizes:
        while pending is None or len(pending.keys) < size:
            fresh = next(batches)
            pending = fresh if pending is None or not pending.keys else _cat(pending, fresh)
        yield _slice(pending, 0, size)
        pending = _slice(pending, size, len(pending.keys))


def _cat(a: DaliBatch, b: DaliBatch) -> DaliBatch:
    return DaliBatch(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]),
                     a.keys + b.keys,
                     {n: torch.cat([a.decisions[n], b.decisions[n]]) for n in a.decisions})


def _slice(batch: DaliBatch, start: int, stop: int) -> DaliBatch:
    if start == 0 and stop == len(batch.keys):
        return batch
    return DaliBatch(batch.images[start:stop], batch.labels[start:stop], batch.keys[start:stop],
                     {n: v[start:stop] for n, v in batch.decisions.items()})


def reader_cache_dir(source: str, cache_dir: str | None) -> str | None:
    """Where DALI's reader gets remote tars: s3:// directly (DALI's own S3 client, honouring
    AWS_ENDPOINT_URL) unless a cache is asked for; other schemes (http(s)://, gs://) always through
    a local cache (a default one under the temporary directory if none is given)."""
    if not storage.is_remote(source) or cache_dir is not None:
        return cache_dir
    if source.startswith("s3://"):
        return None
    return str(Path(tempfile.gettempdir()) / "imaginet-shard-cache")


def make_dali_loader(source: str | os.PathLike, config: LoaderConfig) -> DaliLoader:
    """The DALI backend over the shard set at `source` (directory, manifest path or URL)."""
    source = str(source)
    cache_dir = reader_cache_dir(source, config.cache_dir)
    if storage.is_remote(source):
        how = f"through the local cache {cache_dir}" if cache_dir else "directly from S3"
        log.info("DALI reads the shards of %s %s", source, how)
    return DaliLoader(open_shard_set(source, cache_dir, config.cache_bytes), config)
