"""imaginet_shards: pack ImagiNet into WebDataset shards, verify and inspect them, and load them fast.

The public API is what `__all__` names; subpackages: `format` (annotations, tar members, manifest,
image checks), `io` (storage, cache, shard-set reading), `ops` (pack, perturb, verify, stats),
`augment` (the perturbation spec and its CPU and DALI interpreters), `codecs` (window decoding),
`loaders` (`make_loader` and both backends), `sample` (the embedded stand-in dataset) and `bench`
(throughput); `errors` holds the exceptions it raises for bad data and failed storage. See
docs/architecture.md.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> module; imported on first use, so that commands that do not load never import torch.
_EXPORTS = {
    "make_loader": "imaginet_shards.loaders", "Loader": "imaginet_shards.loaders",
    "LoaderConfig": "imaginet_shards.loaders", "SkippedSample": "imaginet_shards.loaders",
    "Preset": "imaginet_shards.augment.spec", "get_preset": "imaginet_shards.augment.spec",
    "PRESETS": "imaginet_shards.augment.spec",
    "PackOptions": "imaginet_shards.ops.pack", "pack": "imaginet_shards.ops.pack",
    "PerturbOptions": "imaginet_shards.ops.perturb", "perturb": "imaginet_shards.ops.perturb",
    "verify": "imaginet_shards.ops.verify", "inspect": "imaginet_shards.ops.stats",
    "open_shard_set": "imaginet_shards.io.shardset", "load_manifest": "imaginet_shards.io.shardset",
    "read_annotations": "imaginet_shards.format.annotations",
    "SampleOptions": "imaginet_shards.sample", "write_sample": "imaginet_shards.sample",
    **{name: "imaginet_shards.errors" for name in (
        "ImaginetError", "AnnotationError", "ImageError", "ShardSetError", "MissingShardSetError",
        "SampleError", "PackError", "StorageError", "DaliSetupError")},
}

__all__ = ["__version__", *_EXPORTS]


def _installed_version() -> str:
    """The installed distribution's version; importlib.metadata is slow to import, so only the
    commands that print or record it pay for it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imaginet")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+local"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _installed_version()
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imaginet_shards' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
