"""A bounded local cache of remote shard files: a second epoch reads local disk.

Files are downloaded whole under a temporary name and renamed (readers never see a partial file),
used in place, and evicted least-recently-used first once the cache holds more than `max_bytes`.
Safe to share between processes (DataLoader workers, ranks on one node): the worst case of a race is
one file downloaded twice. `prefetch` fills the cache ahead of a reader from a background thread.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imaginet_shards.io import storage

log = logging.getLogger(__name__)
DEFAULT_CACHE_BYTES = 64 * 2**30


class ShardCache:
    """One cache directory with its prefetch threads. The threads belong to the process that
    started them: a forked copy (a DataLoader worker) starts its own, and a pickled copy starts
    without any. `close()` stops them."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, prefetch_threads: int = 2):
        if max_bytes <= 0:
            raise ValueError(f"cache size must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._prefetch_threads = prefetch_threads
        self._reset()

    def _reset(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}
        self._pid = os.getpid()

    def _own(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's threads and futures are not ours
            self._reset()

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "max_bytes": self.max_bytes,
                "_prefetch_threads": self._prefetch_threads}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def path_for(self, url: str) -> Path:
        """Cache file of a URL: readable name, plus a hash so equal names from different sets differ."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        return self.directory / f"{digest}-{url.rstrip('/').rsplit('/', 1)[-1]}"

    def fetch(self, url: str) -> Path:
        """The local copy of `url`, downloading it first if it is not cached (or being prefetched)."""
        self._own()
        with self._lock:
            pending = self._pending.pop(url, None)
        if pending is not None and pending.result().exists():
            return pending.result()
        return self._fetch(url)

    def _fetch(self, url: str) -> Path:
        target = self.path_for(url)
        if target.exists():
            os.utime(target)  # most recently used
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            storage.copy_to_local(url, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict(keep=target)
        return target

    def prefetch(self, urls: list[str]) -> None:
        """Start downloading `urls` in the background, in order."""
        self._own()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._prefetch_threads, thread_name_prefix="prefetch")
            for url in urls:
                if url not in self._pending and not self.path_for(url).exists():
                    self._pending[url] = self._pool.submit(self._fetch, url)

    def evict(self, keep: Path | None = None) -> None:
        """Delete least-recently-used files until the cache fits in max_bytes."""
        files = []
        for path in self.directory.iterdir():
            if path.is_file() and not path.name.startswith("."):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
                log.debug("evicted %s (%d bytes)", path.name, size)

    def close(self) -> None:
        """Stop prefetching (downloads under way finish under their temporary names)."""
        self._own()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
