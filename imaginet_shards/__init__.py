"""imaginet_shards: pack ImagiNet into WebDataset shards, verify and inspect them, and load them fast."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("imaginet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"


def __getattr__(name: str):
    """`imaginet_shards.make_loader` without importing torch for the commands that do not load."""
    if name == "make_loader":
        from .loader import make_loader

        return make_loader
    raise AttributeError(f"module 'imaginet_shards' has no attribute {name!r}")
