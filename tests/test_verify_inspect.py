import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.trees import make_dataset
from imaginet_shards.ops.pack import PackOptions, pack
from imaginet_shards.ops.stats import format_report, inspect
from imaginet_shards.ops.verify import verify


@pytest.fixture
def packed(tiny_dataset, tmp_path) -> Path:
    root, annotations = tiny_dataset
    pack(PackOptions(root=root, annotations=annotations, out=tmp_path / "out", max_count=16,
                     progress=False))
    return tmp_path / "out"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imaginet_shards", *args], capture_output=True,
                          text=True, timeout=120)


def test_clean_set_verifies_with_decode(packed):
    report = verify(str(packed), decode=True, progress=False)
    assert report.ok, report.problems
    assert report.samples_checked == 60 and report.shards_checked == 4
    result = _cli("verify", str(packed), "--decode")
    assert result.returncode == 0 and "OK" in result.stdout


def test_flipped_image_byte_is_reported_with_shard_and_key(packed):
    shard = packed / "imaginet-000001.tar"
    index = (packed / "imaginet-000001.idx").read_text().splitlines()
    ext, offset, size, name = index[3].split()[:4]
    data = bytearray(shard.read_bytes())
    data[int(offset) + int(size) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    messages = [str(p) for p in verify(str(packed), progress=False).problems]
    key = name.split(".")[0]
    assert f"imaginet-000001.tar:{key}: image sha256 differs from the one recorded at packing" in messages
    assert "imaginet-000001.tar: sha256 differs from the manifest" in messages
    result = _cli("verify", str(packed))
    assert result.returncode == 1 and key in result.stderr


def test_truncated_shard_missing_shard_and_bad_index(packed):
    tar = packed / "imaginet-000000.tar"
    tar.write_bytes(tar.read_bytes()[:20000])
    (packed / "imaginet-000002.tar").unlink()
    idx = packed / "imaginet-000003.idx"
    lines = idx.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split()[1], str(int(lines[1].split()[1]) + 512), 1)
    idx.write_text("\n".join(lines) + "\n")
    messages = "\n".join(str(p) for p in verify(str(packed), progress=False).problems)
    assert "imaginet-000000.tar: size 20000 != manifest" in messages
    assert "imaginet-000002.tar: shard file is missing" in messages
    assert "imaginet-000003.idx: index disagrees with the tar from sample 0 on" in messages


def test_labels_disagreeing_with_json_are_reported(packed):
    shard = packed / "imaginet-000000.tar"
    index = (packed / "imaginet-000000.idx").read_text().splitlines()
    fields = index[1].split()
    labels_offset = int(fields[fields.index("labels") + 1])
    data = bytearray(shard.read_bytes())
    data[labels_offset + 4] = 3  # content
    shard.write_bytes(bytes(data))
    messages = "\n".join(str(p) for p in verify(str(packed), progress=False).problems)
    assert "disagree with .json" in messages


def test_missing_manifest_is_a_clear_error(tmp_path):
    result = _cli("verify", str(tmp_path))
    assert result.returncode != 0 and "no manifest.json" in result.stderr


def test_inspect_counts_and_flags_format_confound(tmp_path):
    root = tmp_path / "root"
    annotations = make_dataset(root, 48)  # every .webp in helpers.trees.SOURCES is synthetic
    pack(PackOptions(root=root, annotations=annotations, out=tmp_path / "out", progress=False))
    report = inspect(str(tmp_path / "out"))
    assert report.counts["origin"] == {"real": 16, "synthetic": 32}
    assert report.formats == {"png": 24, "jpeg": 16, "webp": 8}
    fmt = next(row for row in report.bias if row["feature"] == "format")
    assert fmt["table"]["webp"] == {"real": 0, "synthetic": 8, "synthetic_share": 1.0}
    assert fmt["flag"]
    text = format_report(report)
    assert text.startswith("WARNING: format alone predicts real vs synthetic")
    result = _cli("inspect", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0 and "<-- confound" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["samples"] == 48


def test_bias_auc_equals_scikit_learns():
    """`inspect` computes its single-feature AUCs itself (ties ranked as scikit-learn ranks them)."""
    from sklearn.metrics import roc_auc_score

    from imaginet_shards.ops.stats import _auc

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 200))
        origin = rng.integers(0, 2, n)
        feature = rng.integers(0, int(rng.integers(1, 6)), n) * 0.137  # few values: many ties
        if len(set(origin)) < 2:
            assert _auc(feature, origin) is None
        else:
            assert _auc(feature, origin) == pytest.approx(roc_auc_score(origin, feature), abs=1e-12)


def test_file_size_bins_equal_pandas_qcut():
    """`inspect` bins file sizes itself (numpy only); bins and their names are pandas' `qcut`'s."""
    import pandas as pd

    from imaginet_shards.ops.stats import quantile_bins

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 80))
        values = [rng.integers(1, 3_000_000, n), rng.integers(1, 4, n) * 1000,
                  np.full(n, int(rng.integers(1, 10**6)))][trial % 3]
        count = min(5, len(np.unique(values)))
        expected = pd.qcut(pd.Series(values), count, duplicates="drop")
        ids, names = quantile_bins(values, count)
        assert names == [str(interval) for interval in expected.cat.categories]
        assert ids.tolist() == expected.cat.codes.tolist()
