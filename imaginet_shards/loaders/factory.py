"""make_loader: the one entry point to both backends (docs/architecture.md, "The loader contract")."""
from __future__ import annotations

import logging
import os

from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.env import DistEnv, dali_installed, default_device
from imaginet_shards.io.cache import DEFAULT_CACHE_BYTES
from imaginet_shards.loaders.base import Backend, Loader, LoaderConfig, OnError

__all__ = ["make_loader", "resolve_world"]

log = logging.getLogger(__name__)


def resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): explicit values win, else torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        env = DistEnv.from_env()
        rank = env.rank if rank is None else rank
        world_size = env.world_size if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    return rank, world_size


def make_loader(source: str | os.PathLike[str], *, backend: Backend = "auto",
                preset: str | Preset = "train", batch_size: int, rank: int | None = None,
                world_size: int | None = None, seed: int = 0, epoch: int = 0,
                device: str | None = None, workers: int = 2, on_error: OnError = "raise",
                shuffle: bool = True, shuffle_buffer: int = 512, drop_last: bool = True,
                cache_dir: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Loader:
    """A loader over the shard set at `source` (directory, manifest.json path or URL).

    Args:
        backend: "dali", "cpu", or "auto": DALI when `nvidia.dali` imports and a pipeline can be
            built, else the CPU backend (with a warning saying why, when DALI is installed).
        preset: a preset name ("train", "eval", "calibration", "social") or a `Preset`.
        batch_size: samples per batch on each rank.
        rank, world_size: default to torchrun's RANK / WORLD_SIZE (0 and 1 without them).
        seed, epoch: with rank and world size, fix the order and the perturbations.
        device: where batches land; default `cuda:LOCAL_RANK` when CUDA is available, else `cpu`.
        workers: CPU worker processes (CPU backend) or decoder threads (DALI).
        on_error: "raise" names the shard and key of an unusable sample; "skip" (CPU backend)
            drops and counts it in `loader.skipped`.
        shuffle, shuffle_buffer: shard-order shuffle, and how far (in places) the local shuffle inside
            a rank's range may move a sample (world.py).
        drop_last: drop the epoch's tail to keep full, equal batches (training); False keeps it.
        cache_dir, cache_bytes: a local cache of whole remote shards, evicted least-recently-used.
    """
    if backend not in ("auto", "dali", "cpu"):
        raise ValueError(f"backend must be 'auto', 'dali' or 'cpu', got {backend!r}")
    rank, world_size = resolve_world(rank, world_size)
    config = LoaderConfig(preset=get_preset(preset), batch_size=batch_size, rank=rank,
                          world_size=world_size, seed=seed, epoch=epoch,
                          device=default_device() if device is None else device, workers=workers,
                          on_error=on_error, shuffle=shuffle, shuffle_buffer=shuffle_buffer,
                          drop_last=drop_last, cache_dir=cache_dir, cache_bytes=cache_bytes)
    loader = _build(str(source), backend, config)
    log.info("%s: %s (asked for backend %r), rank %d of %d, device %s, %d worker(s)", source,
             type(loader).__name__, backend, rank, world_size, config.device, workers)
    return loader


def _build(source: str, backend: Backend, config: LoaderConfig) -> Loader:
    if backend == "dali":
        from imaginet_shards.loaders.dali import make_dali_loader
        return make_dali_loader(source, config)
    if backend == "auto" and dali_installed():
        try:
            from imaginet_shards.loaders.dali import make_dali_loader
            return make_dali_loader(source, config)
        except NotImplementedError as exc:  # an option only the CPU backend supports: expected
            log.info("using the CPU backend: %s", exc)
        except (ImportError, RuntimeError) as exc:  # DaliSetupError: this machine, not the data
            log.warning("DALI is installed but unusable here (%s); using the CPU backend", exc)
    from imaginet_shards.io.shardset import open_shard_set
    from imaginet_shards.loaders.cpu import CpuLoader
    return CpuLoader(open_shard_set(source, config.cache_dir, config.cache_bytes), config)
