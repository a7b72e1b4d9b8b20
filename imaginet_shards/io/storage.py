"""Where shard sets live: local directories or URLs (s3://, gs://, http(s)://) opened through fsspec.

Every read and write of a shard set goes through this module, so the rest of the code never cares
whether a location is a directory or a bucket. Remote operations are retried with exponential backoff
on transient errors (5xx, timeouts, connection resets, cut connections); after the last attempt a
StorageError names the URL. Credentials and endpoints come from the standard places: the `AWS_*`
variables (`AWS_ENDPOINT_URL` for S3-compatible stores, which DALI reads too; the CLI's
`--endpoint-url` sets it for its own process) or `~/.aws`; this module reads the environment at
each call and never writes it.
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, TypeVar

from imaginet_shards.errors import StorageError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "http://", "https://")
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How remote operations are retried (exponential backoff) and how long a connection may hang."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError(f"invalid retry policy {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The defaults, overridden by IMAGINET_RETRIES, IMAGINET_CONNECT_TIMEOUT and
        IMAGINET_READ_TIMEOUT; read at each call, so a change of the environment takes effect."""
        environ = os.environ if environ is None else environ
        try:
            return cls(attempts=int(environ.get("IMAGINET_RETRIES", cls.attempts)),
                       connect_timeout=float(environ.get("IMAGINET_CONNECT_TIMEOUT", cls.connect_timeout)),
                       read_timeout=float(environ.get("IMAGINET_READ_TIMEOUT", cls.read_timeout)))
        except ValueError as exc:
            raise ValueError(f"bad IMAGINET_RETRIES / IMAGINET_*_TIMEOUT setting: {exc}") from None

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** attempt)


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def join(base: str | os.PathLike, name: str) -> str:
    """`base/name` for a directory or a URL prefix."""
    base = str(base)
    if is_remote(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, resets, cut connections and 5xx answers; not 4xx or missing files."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    # before Python 3.11 asyncio (aiohttp, under the remote filesystems) had its own TimeoutError;
    # looked up only if something imported asyncio, so local commands never import it
    asyncio = sys.modules.get("asyncio")
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
            asyncio is not None and isinstance(exc, asyncio.TimeoutError)):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", status)
    if isinstance(status, int):
        return status >= 500 or status == 429
    name = type(exc).__name__
    transient_names = ("ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError",
                       "ClientOSError", "EndpointConnectionError", "ConnectionClosedError",
                       "ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError",
                       "IncompleteRead", "ResponseStreamingError", "ProtocolError")
    if name in transient_names:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def retry(operation: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """Run `operation`, retrying transient failures with exponential backoff (`policy`, by default
    `RetryPolicy.from_env()`)."""
    policy = RetryPolicy.from_env() if policy is None else policy
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc):
                if isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise
                raise StorageError(what, f"{type(exc).__name__}: {exc}") from exc
            if attempt == policy.attempts - 1:
                raise StorageError(what, f"still failing after {policy.attempts} attempts: "
                                         f"{type(exc).__name__}: {exc}") from exc
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


@cache
def _filesystem(protocol: str, endpoint: str | None, connect_timeout: float, read_timeout: float):
    import fsspec

    if protocol == "s3":
        return fsspec.filesystem(
            "s3", endpoint_url=endpoint, skip_instance_cache=True,
            config_kwargs={"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                           "retries": {"max_attempts": 2, "mode": "standard"}})
    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=read_timeout)
        return fsspec.filesystem(protocol, skip_instance_cache=True,
                                 client_kwargs={"timeout": timeout})
    return fsspec.filesystem(protocol, skip_instance_cache=True)


# fsspec's async filesystems cannot cross a fork: forked workers (the packer's) make their own.
os.register_at_fork(after_in_child=_filesystem.cache_clear)


def filesystem(url: str, policy: RetryPolicy | None = None):
    """(fsspec filesystem, path within it) for a remote URL, with the policy's timeouts."""
    policy = RetryPolicy.from_env() if policy is None else policy
    protocol = url.split("://", 1)[0]
    fs = _filesystem("gcs" if protocol == "gs" else protocol,
                     os.environ.get("AWS_ENDPOINT_URL") if protocol == "s3" else None,
                     policy.connect_timeout, policy.read_timeout)
    return fs, (url if protocol in ("http", "https") else url.split("://", 1)[1])


class RetryingReader(io.RawIOBase):
    """A seekable read-only stream over a remote object that survives cut connections: a failed
    read reopens the object at the current offset (with backoff) instead of failing the epoch."""

    def __init__(self, url: str, policy: RetryPolicy | None = None):
        super().__init__()
        self.url = url
        self._policy = policy = RetryPolicy.from_env() if policy is None else policy
        self._fs, self._path = filesystem(url, policy)
        self._size = retry(lambda: self._fs.size(self._path), f"size of {url}", policy)
        self._pos = 0
        self._stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _read_once(self, size: int) -> bytes:
        if self._stream is None:
            self._stream = self._fs.open(self._path, "rb", block_size=8 << 20)
        stream = self._stream
        if stream.tell() != self._pos:
            stream.seek(self._pos)
        return stream.read(size)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        if size == 0 or self._pos >= self._size:
            return b""

        def attempt() -> bytes:
            try:
                return self._read_once(size)
            except Exception:
                self._drop_stream()
                raise

        data = retry(attempt, f"reading {self.url} at byte {self._pos}", self._policy)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            self._stream = None

    def close(self) -> None:
        self._drop_stream()
        super().close()


def open_read(location: str | os.PathLike) -> BinaryIO:
    """A seekable binary stream over a local file or a remote object (retrying, see RetryingReader)."""
    location = str(location)
    if not is_remote(location):
        return open(location, "rb")
    return io.BufferedReader(RetryingReader(location), buffer_size=1 << 20)


def read_bytes(location: str | os.PathLike) -> bytes:
    location = str(location)
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = filesystem(location)
    return retry(lambda: fs.cat_file(path), f"reading {location}")


def exists(location: str | os.PathLike) -> bool:
    location = str(location)
    if not is_remote(location):
        return os.path.exists(location)
    fs, path = filesystem(location)
    try:  # fs.exists() reports any error, a 503 too, as absence
        retry(lambda: fs.info(path), f"checking {location}")
        return True
    except FileNotFoundError:
        return False


def size(location: str | os.PathLike) -> int:
    location = str(location)
    if not is_remote(location):
        return os.path.getsize(location)
    fs, path = filesystem(location)
    return retry(lambda: fs.size(path), f"size of {location}")


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a whole object atomically: a temporary name renamed locally; one PUT remotely (an
    object appears only once complete)."""
    location = str(location)
    if not is_remote(location):
        target = Path(location)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    fs, path = filesystem(location)
    retry(lambda: fs.pipe_file(path, data), f"writing {location}")


def put_file(local: str | os.PathLike, location: str | os.PathLike) -> None:
    """Move a finished local file to `location` (a rename locally; an upload, multipart for large
    files, remotely)."""
    location = str(location)
    if not is_remote(location):
        os.replace(local, location)
        return
    fs, path = filesystem(location)
    retry(lambda: fs.put_file(str(local), path), f"uploading {local} to {location}")
    os.unlink(local)


def remove(location: str | os.PathLike) -> None:
    location = str(location)
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    if exists(location):
        retry(lambda: fs.rm_file(path), f"removing {location}")


def list_names(directory: str | os.PathLike) -> list[str]:
    """Names of the files directly under a directory or URL prefix ([] when there is none)."""
    directory = str(directory)
    if not is_remote(directory):
        return sorted(p.name for p in Path(directory).iterdir() if p.is_file()) \
            if os.path.isdir(directory) else []
    fs, path = filesystem(directory)
    try:
        entries = retry(lambda: fs.ls(path.rstrip("/"), detail=True, refresh=True),
                        f"listing {directory}")
    except FileNotFoundError:
        return []
    return sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")


def copy_to_local(location: str, target: Path) -> Path:
    """Download (or copy) a whole file to `target`, atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open_read(location) as source, open(tmp, "wb") as sink:
        shutil.copyfileobj(source, sink, 4 << 20)
    os.replace(tmp, target)
    return target
