"""Loaders: shard sets to batches on the training device, with one contract for two backends.

`make_loader` builds the DALI backend (`dali`: GPU or CPU pipelines) or the CPU backend (`cpu`:
members read through the index offsets, DataLoader workers); `base` holds the contract both implement
(`LoaderConfig`, the `Loader` protocol), `world` the pure partitioning of samples over ranks, workers
and epochs.
"""
from imaginet_shards.loaders.base import Backend, Loader, LoaderConfig, OnError, SkippedSample
from imaginet_shards.loaders.factory import make_loader

__all__ = ["Backend", "Loader", "LoaderConfig", "OnError", "SkippedSample", "make_loader"]
