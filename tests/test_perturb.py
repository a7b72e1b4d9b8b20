"""`perturb`: a valid shard set, byte-identical whatever the worker count, agreeing with the loader."""
from __future__ import annotations

import json
import tarfile

import pytest
import torch
from click.testing import CliRunner

from helpers.shardsets import build_shards
from imaginet_shards.cli import main
from imaginet_shards.io.shardset import load_manifest
from imaginet_shards.loaders import make_loader
from imaginet_shards.ops.perturb import PerturbOptions, perturb
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
