import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.trees import make_dataset
from imaginet_shards.errors import AnnotationError
from imaginet_shards.format.annotations import LABEL_COLUMNS
from imaginet_shards.format.tar import _tarfile_header, member_header, parse_index
from imaginet_shards.io.shardset import load_manifest
from imaginet_shards.ops.pack import (
    PackError,
    PackOptions,
    pack,
    plan_shards,
    split_shards,
    stratified_order,
)


def _pack(root, annotations, out, **kw):
    kw.setdefault("max_count", 16)
    return pack(PackOptions(root=root, annotations=annotations, out=out, progress=False, **kw))


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _source_sha(root: Path, annotations: Path) -> dict[str, str]:
    paths = [line.split(",")[0][2:] for line in annotations.read_text().splitlines()]
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in paths}


def test_gnu_tar_reads_shards_and_every_image_is_byte_exact(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    manifest = _pack(root, annotations, tmp_path / "out", workers=2)
    assert manifest.totals["samples"] == 60 and len(manifest.shards) == 4
    expected = _source_sha(root, annotations)
    seen = {}
    for entry in manifest.shards:
        extract = tmp_path / "x" / entry.name
        extract.mkdir(parents=True)
        subprocess.run(["tar", "xf", str(tmp_path / "out" / entry.name), "-C", str(extract)], check=True)
        for meta_path in extract.glob("*.json"):
            meta = json.loads(meta_path.read_text())
            image = next(p for p in extract.glob(meta_path.stem + ".*")
                         if p.suffix in (".jpg", ".png", ".webp"))
            seen[meta["path"]] = hashlib.sha256(image.read_bytes()).hexdigest()
            labels = np.frombuffer((extract / f"{meta_path.stem}.labels").read_bytes(), "<i4")
            assert labels.tolist() == [meta["labels"][c] for c in
                                       ("origin", "content", "family", "generator")]
            assert (extract / f"{meta_path.stem}.cls").read_text() == str(labels[0])
    assert seen == expected


def test_webdataset_reads_shards(tiny_dataset, tmp_path):
    import webdataset as wds

    root, annotations = tiny_dataset
    manifest = _pack(root, annotations, tmp_path / "out")
    urls = [str(tmp_path / "out" / e.name) for e in manifest.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False))  # no decoder: raw bytes only
    assert len(samples) == 60
    expected = _source_sha(root, annotations)
    for sample in samples:
        meta = json.loads(sample["json"])
        image = sample.get("jpg") or sample.get("png") or sample.get("webp")
        assert hashlib.sha256(image).hexdigest() == expected[meta["path"]] == meta["sha256"]
        assert np.frombuffer(sample["labels"], "<i4").tolist() == [meta["labels"][c] for c in LABEL_COLUMNS]


def test_dali_reads_shards_with_our_indexes(tiny_dataset, tmp_path):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    root, annotations = tiny_dataset
    out = tmp_path / "out"
    manifest = _pack(root, annotations, out)

    @dali.pipeline_def(batch_size=7, num_threads=1, device_id=None)
    def read():
        image, labels, meta = fn.readers.webdataset(
            paths=[str(out / e.name) for e in manifest.shards],
            index_paths=[str(out / e.index) for e in manifest.shards],
            ext=["jpg;png;webp", "labels", "json"], dtypes=[types.UINT8, types.INT32, types.UINT8],
            random_shuffle=False, name="reader")
        return image, labels, meta

    pipe = read()
    pipe.build()
    expected = _source_sha(root, annotations)
    seen = 0
    while seen < 60:
        images, labels, metas = pipe.run()
        for i in range(len(images)):
            meta = json.loads(bytes(np.asarray(metas.at(i))))
            assert hashlib.sha256(np.asarray(images.at(i)).tobytes()).hexdigest() == expected[meta["path"]]
            assert np.asarray(labels.at(i)).tolist() == [meta["labels"][c] for c in LABEL_COLUMNS]
            seen += 1


def test_our_index_equals_dali_wds2idx(tiny_dataset, tmp_path):
    wds2idx = Path(sys.executable).with_name("wds2idx")
    if not wds2idx.exists():
        pytest.skip("DALI's wds2idx is not installed")
    root, annotations = tiny_dataset
    manifest = _pack(root, annotations, tmp_path / "out")
    for entry in manifest.shards:
        theirs = tmp_path / f"{entry.name}.dali.idx"
        subprocess.run([str(wds2idx), str(tmp_path / "out" / entry.name), str(theirs)], check=True,
                       capture_output=True)
        assert (tmp_path / "out" / entry.index).read_text() == theirs.read_text()


def test_pack_is_reproducible_and_rerun_is_a_no_op(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    first = _pack(root, annotations, tmp_path / "a", workers=1)
    second = _pack(root, annotations, tmp_path / "b", workers=2)
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    assert first == second
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}
    assert _pack(root, annotations, tmp_path / "a") == first
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}


def test_shards_hold_the_global_label_mix(tmp_path):
    labels = np.array([[0, 0, 4, 8]] * 500 + [[1, 0, 0, 0]] * 300 + [[1, 3, 2, 6]] * 200)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(1000))
    for start in range(0, 1000, 100):
        chunk = labels[order[start:start + 100]]
        assert abs((chunk[:, 0] == 0).sum() - 50) <= 2
        assert abs((chunk[:, 3] == 6).sum() - 20) <= 2
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def test_split_respects_count_and_size():
    sizes = np.array([100] * 10)
    assert split_shards(sizes, max_count=4, max_size=10**9) == [(0, 4), (4, 8), (8, 10)]
    ranges = split_shards(sizes, max_count=100, max_size=3 * (100 + 2560))
    assert ranges == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_plan_keeps_every_row_whole_in_stratified_order(tmp_path):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=(50, 4))
    frame = pd.DataFrame({"path": [f"d{i % 4}/f{i}.png" for i in range(50)],
                          **{c: labels[:, k] for k, c in enumerate(LABEL_COLUMNS)},
                          "line": np.arange(50) * 2 + 1, "size": rng.integers(1, 10**6, size=50)})
    options = PackOptions(root=tmp_path, annotations=tmp_path / "a.txt", out=tmp_path, max_count=7, seed=2)
    plans = plan_shards(frame, options)
    samples = [s for plan in plans for s in plan.samples]
    assert [len(p.samples) for p in plans] == [7] * 7 + [1]
    assert [s.path for s in samples] == frame["path"].iloc[stratified_order(labels, seed=2)].tolist()
    assert [s.key for s in samples] == [f"{i:09d}" for i in range(50)]
    rows = frame.set_index("path")
    for s in samples:
        row = rows.loc[s.path]
        assert (s.line, s.labels, s.size) == (row["line"], tuple(row[list(LABEL_COLUMNS)]), row["size"])
        assert all(type(v) is int for v in (s.line, s.size, *s.labels))  # plain ints: JSON fingerprints


def test_killed_pack_leaves_no_manifest_and_rerun_completes_identically(tmp_path):
    root = tmp_path / "root"
    annotations = make_dataset(root, 240, side=160)
    reference = tmp_path / "reference"
    _pack(root, annotations, reference, max_count=4, workers=1)
    out = tmp_path / "out"
    code = ("import sys; from pathlib import Path; from imaginet_shards.ops.pack import PackOptions, pack; "
            f"pack(PackOptions(root=Path({str(root)!r}), annotations=Path({str(annotations)!r}), "
            f"out=Path({str(out)!r}), max_count=4, workers=1, progress=False))")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    state = out / ".imaginet-pack"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(state.glob("*.json"))) < 3:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(state.glob("*.json")))
    assert 3 <= done < 60, "the pack must be killed midway"
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_manifest(str(out))
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    _pack(root, annotations, out, max_count=4, workers=2)
    assert _shard_bytes(out) == _shard_bytes(reference)
    reused = [n for n, t in kept.items() if (out / n).stat().st_mtime_ns == t]
    assert len(reused) >= 3
    assert not state.exists()


def test_refuses_to_overwrite_a_different_shard_set(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    _pack(root, annotations, tmp_path / "out", seed=0)
    with pytest.raises(PackError, match="different shard set.*--overwrite"):
        _pack(root, annotations, tmp_path / "out", seed=1)
    manifest = _pack(root, annotations, tmp_path / "out", seed=1, overwrite=True)
    assert manifest.options["seed"] == 1
    assert {p.name for p in (tmp_path / "out").glob("*.tar")} == {e.name for e in manifest.shards}


def _corrupt_inputs(root: Path, annotations: Path) -> dict[str, str]:
    lines = annotations.read_text().splitlines()
    def path_of(i):
        return root / lines[i].split(",")[0][2:]
    truncated, garbage, missing = path_of(0), path_of(1), path_of(2)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(b"this is not an image at all" * 10)
    missing.unlink()
    (root.parent / "outside.png").write_bytes(path_of(3).read_bytes())
    annotations.write_text("\n".join(lines + ["./../outside.png,0,0,4,8"]) + "\n")
    return {lines[0].split(",")[0][2:]: "truncated", lines[1].split(",")[0][2:]: "not a JPEG, PNG or WebP",
            lines[2].split(",")[0][2:]: "missing", "../outside.png": "escapes the dataset root"}


@pytest.mark.parametrize("victim", [0, 1, 2, 3])
def test_bad_input_raises_with_path_and_reason(tiny_dataset, tmp_path, victim):
    root, annotations = tiny_dataset
    problems = list(_corrupt_inputs(root, annotations).items())
    path, reason = problems[victim]
    lines = annotations.read_text().splitlines()
    keep = [line for line in lines
            if line.split(",")[0][2:] not in dict(problems) or line.split(",")[0][2:] == path]
    annotations.write_text("\n".join(keep) + "\n")
    with pytest.raises((PackError, AnnotationError)) as info:  # escaping the root: AnnotationError
        _pack(root, annotations, tmp_path / "out")
    assert path in str(info.value) and reason in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list(tmp_path.glob("out/.*.tmp"))


def test_bad_input_skipped_and_listed(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    problems = _corrupt_inputs(root, annotations)
    problems.pop("../outside.png")  # a line that escapes the root is an annotation error, always
    annotations.write_text("\n".join(annotations.read_text().splitlines()[:-1]) + "\n")
    manifest = _pack(root, annotations, tmp_path / "out", on_error="skip")
    assert manifest.totals["samples"] == 57
    recorded = {s.path: s.reason for s in manifest.skipped}
    assert set(recorded) == set(problems)
    for path, reason in problems.items():
        assert reason in recorded[path]


def test_index_files_match_tar_offsets(tiny_dataset, tmp_path):
    root, annotations = tiny_dataset
    manifest = _pack(root, annotations, tmp_path / "out")
    entry = manifest.shards[0]
    index = parse_index((tmp_path / "out" / entry.index).read_text())
    with tarfile.open(tmp_path / "out" / entry.name) as archive:
        members = {m.name: m for m in archive.getmembers()}
    flat = [e for sample in index for e in sample]
    assert len(flat) == len(members)
    for item in flat:
        assert members[item.name].offset_data == item.offset and members[item.name].size == item.size


def test_webp_sizes_come_from_the_header_and_match_pillow():
    """check_image reads WebP sizes with libwebp's header parser: the same as Pillow's for lossy,
    lossless, alpha (VP8X) and animated files; truncated ones are still refused."""
    from io import BytesIO

    from PIL import Image

    from imaginet_shards.format.images import ImageCheckError, check_image

    rng = np.random.default_rng(0)
    blobs = []
    for options, mode, size in [({"quality": 80}, "RGB", (37, 21)), ({"lossless": True}, "RGB", (300, 17)),
                                ({"quality": 60}, "RGBA", (64, 129))]:
        buffer = BytesIO()
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        Image.fromarray(pixels, mode).save(buffer, "WEBP", **options)
        blobs.append(buffer.getvalue())
    frames = [Image.new("RGB", (45, 33), (v, v, v)) for v in (0, 255)]
    buffer = BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=10)
    blobs.append(buffer.getvalue())
    for blob in blobs:
        info = check_image(blob)
        assert info.format == "webp" and (info.width, info.height) == Image.open(BytesIO(blob)).size
    with pytest.raises(ImageCheckError, match="WEBP"):
        check_image(blobs[0][:len(blobs[0]) // 2])


@pytest.mark.parametrize("name", ["000000001.jpg", "000123456.labels", "a", "x" * 99, "x" * 100,
                                  "dir/x.png", "é.json", "d/" * 60 + ".png"])
def test_member_headers_are_what_tarfile_writes(name):
    """The directly assembled ustar headers equal tarfile's, byte for byte (shards stay identical)."""
    for size in (0, 1, 511, 512, 10**6, 8**11 - 1, 2**31, 987_654_321):
        assert member_header(name, size) == _tarfile_header(name, size)
