"""`perturb`: a valid shard set, byte-identical whatever the worker count, agreeing with the loader;
and `--layout reference`, the authors' perturbed test set file for file."""
from __future__ import annotations

import json
import re
import tarfile

import pytest
import torch
from click.testing import CliRunner

from helpers.shardsets import build_shards
from helpers.trees import make_dataset
from imaginet_shards.augment.cpu import augment, decode
from imaginet_shards.augment.spec import get_preset
from imaginet_shards.cli import main
from imaginet_shards.format.annotations import VOCABULARIES, read_annotations
from imaginet_shards.io.shardset import load_manifest
from imaginet_shards.loaders import make_loader
from imaginet_shards.loaders.world import sample_rng
from imaginet_shards.ops.perturb import PerturbOptions, perturb
from imaginet_shards.ops.testset import (
    REFERENCE_FAMILIES,
    ReferenceTestsetOptions,
    annotation_files,
    plan_testset,
    write_reference_testset,
)
from imaginet_shards.ops.verify import verify


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("perturb"), 14, max_count=5, seed=2)


@pytest.fixture(scope="module")
def perturbed(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("perturbed") / "social"
    perturb(PerturbOptions(str(source), out, seed=7, workers=1, progress=False))
    return out


def test_output_is_a_valid_shard_set_with_provenance(source, perturbed):
    report = verify(str(perturbed), decode=True, progress=False)
    assert report.ok, report.problems
    manifest = load_manifest(str(perturbed))
    assert manifest.samples == 14 and manifest.options["perturb"]["seed"] == 7
    with tarfile.open(perturbed / manifest.shards[0].name) as archive:
        names = archive.getnames()
        meta = json.loads(archive.extractfile(names[3]).read())
    assert meta["source"]["key"] == meta["key"] == names[0].split(".")[0]
    assert meta["width"] == meta["height"] == 256
    assert meta["perturbation"]["ops"][-1]["op"] in ("ResizeOp", "CompressOp")
    assert meta["format"] == "png" == names[0].split(".")[1]  # compression damage stored losslessly


def test_identical_whatever_the_worker_count(source, perturbed, tmp_path):
    result = CliRunner().invoke(main, ["perturb", str(source), str(tmp_path / "two"), "--seed", "7",
                                       "--workers", "2"])
    assert result.exit_code == 0, result.output
    for name in ["manifest.json"] + [p.name for p in perturbed.glob("*.tar")]:
        assert (perturbed / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_loader_social_preset_matches_the_perturbed_set(source, perturbed):
    """The CPU loader's social preset and `perturb` draw and apply the same operations."""
    def images_by_key(shards, preset):
        loader = make_loader(shards, backend="cpu", preset=preset, batch_size=2, rank=0,
                             world_size=1, workers=0, seed=7, drop_last=False)
        return {k: img for batch in loader.batches() for k, img in zip(batch.keys, batch.images)}

    online, offline = images_by_key(source, "social"), images_by_key(perturbed, "eval")
    assert online.keys() == offline.keys()
    assert all(torch.equal(online[k], offline[k]) for k in online)


def test_refuses_to_overwrite(source, perturbed):
    with pytest.raises(ValueError, match="already holds a shard set"):
        perturb(PerturbOptions(str(source), perturbed, progress=False))
    with pytest.raises(ValueError, match="must differ"):
        perturb(PerturbOptions(str(source), source, progress=False, overwrite=True))


# --- the reference layout: the authors' perturbed test set, file for file -------------------------

REFERENCE_LINE = re.compile(r"^\./testset/(photos|paintings|faces|uncategorized)/"
                            r"(real|synthetic/(gan|sd|midjourney|dalle3))/(\d{5})\.webp,"
                            r"([01]),([0-3]),([0-4]),([0-8])$")


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """A small tree and its four per-family test files: each family's synthetic rows with some real
    rows; the gan file repeats a line (kept, as the reference does) and holds one SD image (listed in
    test_sd.txt by the reference's rule)."""
    base = tmp_path_factory.mktemp("reference")
    root = base / "root"
    rows = make_dataset(root, 12, seed=3, side=160).read_text().splitlines()
    files: dict[str, list[str]] = {family: [] for family in REFERENCE_FAMILIES}
    reals = [r for r in rows if r.split(",")[1] == "0"]
    for row in rows:
        labels = row.split(",")[1:]
        if labels[0] == "1":
            files[REFERENCE_FAMILIES[int(labels[2])]].append(row)
    for i, row in enumerate(reals):
        files[REFERENCE_FAMILIES[i % 4]].append(row)
    files["gan"] += [files["gan"][0], files["sd"].pop(0)]
    paths = []
    for family in REFERENCE_FAMILIES:
        paths.append(base / f"test_annotations_{family}.txt")
        paths[-1].write_text("\n".join(files[family]) + "\n")
    return root, paths


@pytest.fixture(scope="module")
def reference_run(family_files, tmp_path_factory):
    root, paths = family_files
    out = tmp_path_factory.mktemp("reference-out")
    result = CliRunner().invoke(main, ["perturb", str(root), str(out / "set"), "--layout", "reference",
                                       *[arg for path in paths for arg in ("--annotations", str(path))],
                                       "--shards", str(out / "shards"), "--seed", "5", "--workers", "2"])
    assert result.exit_code == 0, result.output
    return out / "set", out / "shards"


def test_reference_layout_numbers_every_line_consecutively(family_files, reference_run):
    root, paths = family_files
    out, _ = reference_run
    inputs = [line for path in paths for line in path.read_text().splitlines()]
    written = {}
    for family in REFERENCE_FAMILIES:
        for line in (out / f"test_{family}.txt").read_text().splitlines():
            match = REFERENCE_LINE.match(line)
            assert match, line
            content, kind, folder_family, number, *labels = match.groups()
            origin, content_label, family_label, _ = map(int, labels)
            assert VOCABULARIES["content"][content_label] == content
            assert kind == ("real" if origin == 0 else f"synthetic/{REFERENCE_FAMILIES[family_label]}")
            written[int(number)] = (family, line)
    assert sorted(written) == list(range(len(inputs)))       # one image per line, repeats included
    for k, source in enumerate(inputs):
        family, line = written[k]
        source_labels = source.split(",")[1:]
        assert line.split(",")[1:] == source_labels
        # synthetic: listed by its family; real: by the file it came from
        from_file = next(i for i, path in enumerate(paths)
                         if k < sum(len(p.read_text().splitlines()) for p in paths[:i + 1]))
        expected = int(source_labels[2]) if source_labels[0] == "1" else from_file
        assert family == REFERENCE_FAMILIES[expected]
    assert written[len(paths[0].read_text().splitlines()) - 1][0] == "sd"   # the SD row in the gan file
    for family in REFERENCE_FAMILIES:                        # each file in the order of k
        numbers = [int(REFERENCE_LINE.match(line).group(4))
                   for line in (out / f"test_{family}.txt").read_text().splitlines()]
        assert numbers == sorted(numbers)


def test_reference_images_are_lossless_webp_of_the_social_preset(family_files, reference_run):
    root, paths = family_files
    out, _ = reference_run
    inputs = [line.split(",")[0] for path in paths for line in path.read_text().splitlines()]
    lines = [line for family in REFERENCE_FAMILIES
             for line in (out / f"test_{family}.txt").read_text().splitlines()]
    assert len(list((out / "testset").rglob("*.webp"))) == len(inputs)
    assert not list(out.rglob(".*.tmp"))
    preset = get_preset("social")
    for line in lines:
        path = line.split(",")[0]
        k = int(path[-10:-5])
        data = (out / path).read_bytes()
        assert data[:4] == b"RIFF" and data[12:16] == b"VP8L"      # lossless
        expected = augment((root / inputs[k]).read_bytes(), preset, sample_rng(5, f"{k:05d}", None))
        assert torch.equal(decode(data), expected)


def test_reference_layout_as_shard_sets(reference_run):
    out, shards = reference_run
    for family in REFERENCE_FAMILIES:
        report = verify(str(shards / family), decode=True, progress=False)
        assert report.ok, report.problems
        listed = {line.split(",")[0][2:]: line for line in
                  (out / f"test_{family}.txt").read_text().splitlines()}
        manifest = load_manifest(str(shards / family))
        assert manifest.samples == len(listed)
        for entry in manifest.shards:
            with tarfile.open(shards / family / entry.name) as archive:
                members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
            for name, raw in members.items():
                if name.endswith(".json"):
                    meta = json.loads(raw)
                    assert meta["path"] in listed and meta["format"] == "webp"
                    assert members[name[:-4] + "webp"] == (out / meta["path"]).read_bytes()


def test_reference_layout_is_identical_whatever_the_worker_count(family_files, reference_run, tmp_path):
    root, paths = family_files
    out, _ = reference_run
    write_reference_testset(ReferenceTestsetOptions(root, tuple(paths), tmp_path / "one", seed=5,
                                                    workers=1, progress=False))
    for path in [*out.glob("*.txt"), *(out / "testset").rglob("*.webp")]:
        assert (tmp_path / "one" / path.relative_to(out)).read_bytes() == path.read_bytes(), path


def test_reference_layout_refuses_bad_input(family_files, reference_run, tmp_path):
    root, paths = family_files
    out, _ = reference_run
    with pytest.raises(ValueError, match="already holds testset"):
        write_reference_testset(ReferenceTestsetOptions(root, tuple(paths), out, progress=False))
    with pytest.raises(ValueError, match="the 4 per-family test files"):
        ReferenceTestsetOptions(root, tuple(paths[:3]), tmp_path / "x")
    broken = tmp_path / "test_annotations_sd.txt"
    broken.write_text(paths[1].read_text() + "./imagenet/missing.JPEG,0,0,4,8\n")
    lines = len(broken.read_text().splitlines())
    with pytest.raises(ValueError, match=f"{broken}:{lines}: imagenet/missing.JPEG: no such"):
        write_reference_testset(ReferenceTestsetOptions(
            root, (paths[0], broken, paths[2], paths[3]), tmp_path / "y", progress=False))
    assert not (tmp_path / "y").exists()


def test_reference_numbering_of_the_official_files(official_annotations):
    """The official per-family files give the authors' published test_{family}.txt: 15,000 /
    15,000 / 5,000 / 5,000 lines numbered 0..39,999, whose texts have the published lengths."""
    names = [official_annotations / f"test_annotations_{f}.txt" for f in REFERENCE_FAMILIES]
    items = plan_testset([read_annotations(n, keep_duplicates=True) for n in names],
                         [str(n) for n in names])
    assert [item.number for item in items] == list(range(40000))
    texts = annotation_files(items)
    assert [len(texts[f"test_{f}.txt"].splitlines()) for f in REFERENCE_FAMILIES] == [15000, 15000, 5000, 5000]
    assert [len(texts[f"test_{f}.txt"]) for f in REFERENCE_FAMILIES] == [703545, 695761, 268209, 257985]
    assert texts["test_dalle3.txt"].startswith("./testset/uncategorized/synthetic/dalle3/35000.webp,1,3,3,7\n")
    assert all(REFERENCE_LINE.match(line) for text in texts.values() for line in text.splitlines())
