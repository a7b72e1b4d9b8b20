import time

import pytest

from helpers.servers import Faults, free_port, http_server, moto_server
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import load_manifest
from imaginet_shards.ops.pack import PackError, PackOptions, pack
from imaginet_shards.ops.stats import inspect
from imaginet_shards.ops.verify import verify

BUCKET = "imaginet-test"


@pytest.fixture(scope="module")
def s3():
    with moto_server() as endpoint:
        fs, _ = storage.filesystem(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield endpoint


def _pack(root, annotations, out, **kw):
    return pack(PackOptions(root=root, annotations=annotations, out=out, max_count=16,
                            progress=False, **kw))


def test_pack_to_s3_is_byte_identical_and_verifies(s3, tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    local = _pack(root, annotations, tmp_path / "local")
    remote = _pack(root, annotations, f"s3://{BUCKET}/sets/a", workers=2)
    assert remote == local
    names = storage.list_names(f"s3://{BUCKET}/sets/a")
    assert names == sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_file())
    for name in names:
        assert storage.read_bytes(f"s3://{BUCKET}/sets/a/{name}") == (tmp_path / "local" / name).read_bytes()
    assert storage.list_names(f"s3://{BUCKET}/sets/a/.imaginet-pack") == []
    report = verify(f"s3://{BUCKET}/sets/a", decode=True, progress=False)
    assert report.ok and report.samples_checked == 60
    assert inspect(f"s3://{BUCKET}/sets/a").counts == inspect(str(tmp_path / "local")).counts
    assert _pack(root, annotations, f"s3://{BUCKET}/sets/a") == local  # finished: a no-op
    with pytest.raises(PackError, match="different shard set"):
        _pack(root, annotations, f"s3://{BUCKET}/sets/a", seed=5)


def test_tampered_remote_shard_is_reported(s3, tiny_dataset):
    root, annotations = tiny_dataset
    url = f"s3://{BUCKET}/sets/tampered"
    manifest = _pack(root, annotations, url)
    shard = f"{url}/{manifest.shards[2].name}"
    data = bytearray(storage.read_bytes(shard))
    data[2000] ^= 0x55
    storage.write_bytes(shard, bytes(data))
    problems = [str(p) for p in verify(url, progress=False).problems]
    assert f"{manifest.shards[2].name}: sha256 differs from the manifest" in problems


def test_http_reads_survive_failed_requests_and_a_cut_connection(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    _pack(root, annotations, tmp_path / "set")
    with http_server(tmp_path, Faults(fail_every=4, cut_request=6)) as (base, faults):
        report = verify(f"{base}/set", decode=True, workers=1, progress=False)
        assert report.ok, report.problems
        assert report.samples_checked == 60
        assert faults.failed >= 2 and faults.cut == 1


def test_unreachable_server_fails_fast_with_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGINET_RETRIES", "2")
    monkeypatch.setenv("IMAGINET_CONNECT_TIMEOUT", "2")
    url = f"http://127.0.0.1:{free_port()}/set/manifest.json"
    started = time.monotonic()
    with pytest.raises(storage.StorageError, match=url.replace(".", r"\.")):
        storage.read_bytes(url)
    assert time.monotonic() - started < 20
    with pytest.raises((storage.StorageError, FileNotFoundError)):
        load_manifest(url)


def test_missing_remote_manifest_is_a_clear_error(s3):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(f"s3://{BUCKET}/nothing-here")


def test_retry_policy_is_read_at_call_time(monkeypatch):
    calls = []

    def refused():
        calls.append(1)
        raise ConnectionRefusedError("refused")

    monkeypatch.setenv("IMAGINET_RETRIES", "2")
    with pytest.raises(storage.StorageError, match="after 2 attempts"):
        storage.retry(refused, "probe")
    assert len(calls) == 2
    monkeypatch.setenv("IMAGINET_RETRIES", "1")
    with pytest.raises(storage.StorageError, match="after 1 attempts"):
        storage.retry(refused, "probe")
    assert len(calls) == 3
    explicit = storage.RetryPolicy(attempts=3, base_delay=0.0)
    with pytest.raises(storage.StorageError, match="after 3 attempts"):
        storage.retry(refused, "probe", explicit)
    assert len(calls) == 6


def test_retry_policy_from_env_rejects_bad_values():
    assert storage.RetryPolicy.from_env({"IMAGINET_READ_TIMEOUT": "5"}).read_timeout == 5.0
    with pytest.raises(ValueError, match="IMAGINET_RETRIES"):
        storage.RetryPolicy.from_env({"IMAGINET_RETRIES": "many"})
    with pytest.raises(ValueError, match="invalid retry policy"):
        storage.RetryPolicy.from_env({"IMAGINET_RETRIES": "0"})
