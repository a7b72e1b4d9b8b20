"""The throughput lab: the bench matrix JSON has every stage, machine information and
package versions; `--model` says how input-bound training is; `tools/gpu_check.py` imports only
torch, torchvision, the trainer's model and loss and the command-line conventions, and exits cleanly
without CUDA."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers.shardsets import build_shards
from imaginet_shards.bench.matrix import MatrixOptions
from imaginet_shards.bench.run import BenchOptions
from imaginet_shards.cli import main
from imaginet_train.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("matrix"), 16, max_count=8)


def test_matrix_json(shards, tmp_path):
    out = tmp_path / "matrix.json"
    result = CliRunner().invoke(train_main, [
        "bench", str(shards), "--backend", "cpu", "--threads", "1", "--crop", "64",
        "--crop", "32", "--batch-size", "4", "--batches", "2", "--warmup", "1", "--repeats", "2",
        "--decode-images", "4", "--model", "small", "--model-steps", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "packages", "settings", "formats", "tar_read", "decode", "full",
                         "model"}
    assert sum(data["formats"].values()) == 16
    assert data["machine"]["cores"] >= 1 and data["machine"]["ram_gb"] > 0
    assert data["packages"]["torch"] and "webdataset" in data["packages"]
    assert data["tar_read"]["images"] == 16 and data["tar_read"]["images_per_sec"] > 0
    assert {d["format"] for d in data["decode"]} == {"jpg", "png", "webp"}
    assert all(d["stage"] == "decode" and d["images"] == 4 for d in data["decode"])
    assert [(r["crop"], r["threads"]) for r in data["full"]] == [(64, 1), (32, 1)]
    for run in data["full"]:
        assert len(run["images_per_sec_runs"]) == 2 and run["images"] == 16
        assert run["cpu_utilisation"] >= 0 and run["peak_rss_mb"] > 0
    (model,) = data["model"]
    assert 0 <= model["input_bound_fraction"] <= 1 and 0 <= model["wait_fraction"] <= 1
    assert model["model_images_per_sec"] > 0 and model["arch"] == "small"
    same_cell = [r for r in data["full"] if r["crop"] == model["crop"]]
    assert model["cores_per_1000_images_per_sec"] == round(same_cell[0]["cpu_ms_per_image"], 2)
    assert "lost to input" in result.output and "feeding 1,000 images/s takes" in result.output


def test_shards_bench_points_model_to_the_trainer(shards):
    """`imaginet-shards bench --model` is a usage error naming the trainer's command."""
    result = CliRunner().invoke(main, ["bench", str(shards), "--backend", "cpu", "--model", "small"])
    assert result.exit_code == 2 and "imaginet-train bench" in result.output


@pytest.mark.parametrize("overrides,message", [
    (dict(stages=("tar", "gpu")), "unknown stages"),
    (dict(threads=()), "at least one value of threads"),
    (dict(model="small", stages=("tar",)), "needs the full stage"),
    (dict(backends=("files",)), "--root and --annotations"),
])
def test_bad_matrix(overrides, message):
    with pytest.raises(ValueError, match=message):
        MatrixOptions(BenchOptions(backend="cpu", shards="x"), **overrides)


def test_gpu_check_without_cuda(tmp_path):
    """Run the script as documented (PYTHONPATH=. from the repo root) with CUDA hidden: exit
    status 2, no result file, and of this repo only the trainer's model and loss imported."""
    probe = (
        "import runpy, sys\n"
        "import torch\n"
        "torch.cuda.is_available = lambda: False\n"
        f"sys.argv = ['gpu_check', '--out', {str(tmp_path / 'g.json')!r}]\n"
        "try:\n"
        "    runpy.run_path('tools/gpu_check.py', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('EXIT', exc.code)\n"
        "import json\n"
        "print('MODULES', json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": ".", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert "EXIT 2" in done.stdout, done.stdout + done.stderr
    assert "CUDA is not available" in done.stderr
    modules = json.loads(done.stdout.split("MODULES", 1)[1])
    ours = {m for m in modules if m.startswith("imaginet")}
    assert ours == {"imaginet_train", "imaginet_train.model", "imaginet_train.catalog",
                    "imaginet_train.losses", "imaginet_train.dist", "imaginet_shards", "imaginet_shards.env",
                    "imaginet_shards.cli_common", "imaginet_shards.errors"}
    assert not {"webdataset", "nvidia"} & {m.split(".")[0] for m in modules}
    assert not (tmp_path / "g.json").exists()
