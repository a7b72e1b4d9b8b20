"""tools/gpu_dali_check.py without a GPU: its comparisons, verdicts and report, its exit statuses
(2 without CUDA; 1, loudly, when CUDA is there but the checks break or fail). Only the GPU is
mocked (`torch.cuda.is_available` and the checks that need a device)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("gpu_dali_check")


def test_arguments(tool):
    args = tool.parser().parse_args([])
    assert args.presets == ["train", "eval", "calibration"] and args.batch == 32
    assert tool.parser().parse_args(["--presets", "eval", "--workers", "3"]).presets == ["eval"]
    with pytest.raises(SystemExit):
        tool.parser().parse_args(["--presets", "social"])


def test_mean_abs_difference(tool):
    a = {"k1": np.zeros((3, 2, 2), np.uint8), "k2": np.full((3, 2, 2), 10, np.uint8)}
    b = {"k1": np.full((3, 2, 2), 2, np.uint8), "k2": np.full((3, 2, 2), 7, np.uint8)}
    assert tool.mean_abs_difference(a, b) == pytest.approx(2.5)  # no uint8 wrap-around
    with pytest.raises(ValueError, match="different samples"):
        tool.mean_abs_difference(a, {"k1": b["k1"]})


def decisions(values: list[float]) -> dict[str, dict[str, float]]:
    return {f"key{i}": {"3.Flip": v} for i, v in enumerate(values)}


def test_decisions_compared_per_sample(tool):
    flips = [-1, 0, 1, 2] * 50
    same = tool.compare_decisions(decisions(flips), decisions(flips))
    assert same == {"identical": True, "samples_differing": 0}
    shuffled = tool.compare_decisions(decisions(flips), decisions(flips[1:] + flips[:1]))
    assert shuffled == {"identical": False, "samples_differing": 200}
    one = tool.compare_decisions(decisions(flips), decisions([5, *flips[1:]]))
    assert one == {"identical": False, "samples_differing": 1}


def result(difference: float | None, identical: bool, mismatched: int) -> dict:
    speed = {"cuda": {"images_per_sec": 900.0, "cpu_ms_per_image": 1.5},
             "cpu": {"images_per_sec": 90.0, "cpu_ms_per_image": 20.0}}
    preset = {"samples": 200, "mean_abs_difference": difference, "speed": speed,
              "decisions": {"identical": identical, "samples_differing": 0 if identical else 50}}
    return {"presets": {"train": preset}, "handoff": {"batches": 7, "mismatched_batches": mismatched}}


def test_problems_and_report(tool):
    limits = {"train": 3.0}
    assert tool.problems(result(1.0, True, 0), limits) == []
    found = tool.problems(result(5.0, True, 2), limits)
    assert len(found) == 2 and "5.000 levels > 3.0" in found[0] and "2 of 7 batches" in found[1]
    assert "other decisions for 50 samples" in tool.problems(result(None, False, 0), limits)[0]
    text = tool.report(result(None, False, 0))
    assert "n/a (draws differ)" in text and "cuda 900.0 images/s 1.5 CPU ms" in text


@pytest.fixture
def with_cuda(monkeypatch, tmp_path):
    """A pretend CUDA machine whose shard set already exists (the checks themselves are given)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    return tmp_path


def test_exit_statuses(tool, monkeypatch, with_cuda, capsys):
    args = tool.parser().parse_args(["--work", str(with_cuda), "--out", str(with_cuda / "r.json")])

    def broken(shards, args):
        raise RuntimeError("nvJPEG failed to initialise")
    assert tool.main(args, broken) == 1
    assert "FAILED: the DALI GPU check could not complete: RuntimeError: nvJPEG" in capsys.readouterr().err
    assert tool.main(args, lambda shards, args: result(9.0, True, 0)) == 1
    assert "FAILED: train: mean |GPU - CPU| 9.000" in capsys.readouterr().err
    assert tool.main(args, lambda shards, args: result(0.4, True, 0)) == 0
    assert json.loads((with_cuda / "r.json").read_text())["problems"] == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tool.main(args) == 2 and "no CUDA" in capsys.readouterr().err
