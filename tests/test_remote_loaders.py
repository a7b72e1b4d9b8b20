"""Both loaders over real servers on 127.0.0.1: S3 (moto) and HTTP with injected faults."""
import time

import pytest
import torch

from helpers.servers import Faults, http_server, moto_server
from helpers.shardsets import build_shards, labels_from_images
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.io import storage
from imaginet_shards.loaders import make_loader

BUCKET = "imaginet-remote"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("remote"), 40, max_count=7)


@pytest.fixture(scope="module")
def s3_shards(shards):
    with moto_server():
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        for path in shards.iterdir():
            if path.is_file():
                storage.write_bytes(f"s3://{BUCKET}/set/{path.name}", path.read_bytes())
        yield f"s3://{BUCKET}/set"


def _epoch(source, backend="cpu", **kw):
    loader = make_loader(source, backend=backend, preset="eval", batch_size=6, rank=0, world_size=1,
                         seed=3, device="cpu", workers=1, drop_last=False, **kw)
    batches = list(loader)
    assert len(batches) == len(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _assert_same_epoch(remote, local):
    assert torch.equal(remote[1], local[1]) and torch.equal(remote[0], local[0])
    preset = get_preset("eval")
    assert torch.equal(labels_from_images(remote[0], preset.mean, preset.std), remote[1])


def test_cpu_loader_streams_from_s3(shards, s3_shards):
    _assert_same_epoch(_epoch(s3_shards), _epoch(str(shards)))


def test_cpu_loader_survives_failed_requests_and_a_cut_connection(shards):
    local = _epoch(str(shards))
    with http_server(shards.parent, Faults(fail_every=5, cut_request=4)) as (base, faults):
        remote = _epoch(f"{base}/{shards.name}")
        assert faults.failed >= 2 and faults.cut == 1
    _assert_same_epoch(remote, local)
    assert remote[1].shape[0] == 40  # every sample exactly once


def test_cache_dir_makes_the_second_epoch_local(shards, tmp_path):
    with http_server(shards.parent) as (base, faults):
        loader = make_loader(f"{base}/{shards.name}", backend="cpu", preset="eval", batch_size=6,
                             rank=0, world_size=1, device="cpu", workers=1, drop_last=False,
                             cache_dir=str(tmp_path / "cache"), cache_bytes=10**9)
        first = torch.cat([labels for _, labels in loader])
        requests = faults.requests
        loader.set_epoch(1)
        second = torch.cat([labels for _, labels in loader])
        assert faults.requests == requests, "the second epoch must not touch the server"
    assert sorted(first.tolist()) == sorted(second.tolist())


def test_server_gone_fails_with_a_clear_error_in_bounded_time(shards, monkeypatch):
    monkeypatch.setenv("IMAGINET_RETRIES", "2")
    monkeypatch.setenv("IMAGINET_CONNECT_TIMEOUT", "2")
    with http_server(shards.parent) as (base, _):
        loader = make_loader(f"{base}/{shards.name}", backend="cpu", preset="eval", batch_size=6,
                             rank=0, world_size=1, device="cpu", workers=0)
    started = time.monotonic()
    with pytest.raises(OSError, match=base.replace(".", r"\.")):
        list(loader)
    assert time.monotonic() - started < 30


def test_dali_loader_reads_s3_through_the_shard_set(shards, s3_shards):
    """DALI gets the bytes from the storage layer's ranged reads, like the CPU backend."""
    pytest.importorskip("nvidia.dali")
    _assert_same_epoch(_epoch(s3_shards, backend="dali"), _epoch(str(shards), backend="dali"))


def test_dali_loader_reads_http_through_the_cache(shards, tmp_path):
    pytest.importorskip("nvidia.dali")
    local = _epoch(str(shards), backend="dali")
    with http_server(shards.parent, Faults(fail_every=6)) as (base, _):
        remote = _epoch(f"{base}/{shards.name}", backend="dali", cache_dir=str(tmp_path / "c"))
    _assert_same_epoch(remote, local)
