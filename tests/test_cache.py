import os
import time

import pytest

from helpers.servers import Faults, http_server
from imaginet_shards.io.cache import ShardCache


def test_cache_downloads_once_and_evicts_least_recently_used(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name in "abc":
        (served / f"{name}.tar").write_bytes(name.encode() * 1000)
    cache = ShardCache(tmp_path / "cache", max_bytes=2500)
    with http_server(served) as (base, faults):
        first = cache.fetch(f"{base}/a.tar")
        assert first.read_bytes() == b"a" * 1000
        requests = faults.requests
        assert cache.fetch(f"{base}/a.tar") == first and faults.requests == requests  # a hit
        past = time.time() - 100
        os.utime(first, (past, past))
        cache.fetch(f"{base}/b.tar")
        cache.fetch(f"{base}/c.tar")  # 3000 bytes > 2500: the least recently used (a) goes
        names = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir())
        assert names == ["b.tar", "c.tar"]


def test_prefetch_fills_the_cache_in_the_background(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for i in range(4):
        (served / f"{i}.tar").write_bytes(bytes([i]) * 5000)
    cache = ShardCache(tmp_path / "cache", max_bytes=10**6)
    with http_server(served, Faults(fail_every=3)) as (base, faults):
        urls = [f"{base}/{i}.tar" for i in range(4)]
        cache.prefetch(urls)
        paths = [cache.fetch(url) for url in urls]
        assert [p.read_bytes() for p in paths] == [bytes([i]) * 5000 for i in range(4)]
        assert faults.failed >= 1
    cache.close()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_cache_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        ShardCache(tmp_path, 0)


def test_cache_threads_belong_to_their_process(tmp_path):
    """A pickled copy (a spawned worker's) starts without the parent's prefetch threads and works;
    close() stops the pool and prefetching can start again."""
    import pickle

    cache = ShardCache(tmp_path / "cache", max_bytes=10**6)
    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 100)
    cache.prefetch([str(source)])
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._pool is None and copy.directory == cache.directory
    assert copy.fetch(str(source)).read_bytes() == b"x" * 100
    cache.close()
    assert cache._pool is None
