"""Where shard sets live: local directories or URLs (s3://, gs://, http(s)://) opened through fsspec.

Every read and write of a shard set goes through this module, so that the rest of the code never
cares whether DEST is a directory or a bucket.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def join(base: str | os.PathLike, name: str) -> str:
    """`base/name` for a directory or a URL prefix."""
    base = str(base)
    if is_remote(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def open_read(location: str | os.PathLike) -> BinaryIO:
    """A binary file object for reading a local path or a URL."""
    location = str(location)
    if not is_remote(location):
        return open(location, "rb")
    fs, path = _fs(location)
    return fs.open(path, "rb")


def read_bytes(location: str | os.PathLike) -> bytes:
    with open_read(location) as stream:
        return stream.read()


def exists(location: str | os.PathLike) -> bool:
    location = str(location)
    if not is_remote(location):
        return os.path.exists(location)
    fs, path = _fs(location)
    return fs.exists(path)
