"""imaginet_shards: pack ImagiNet into WebDataset shards, verify and inspect them, and load them fast."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("imaginet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
