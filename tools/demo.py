#!/usr/bin/env python3
"""The README's main command: the whole chain on the embedded sample dataset.

    make demo            # = python tools/demo.py --out runs/demo

sample → pack (one shard set per split) → verify → inspect → selfcon (small arch, CPU) → linear
(heads on the calibration split) → evaluate (test split, in the paper's tables: per-family files
written as the authors' are, Platt scaling on the calibration split, the reference's JPEG and resize
sweeps), each stage through the same command a user would type; then a report: OUT/report.md with
the tables and plots, and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from imaginet_shards.cli_common import run_command, run_tool

SPLITS = ("train", "calibration", "test")
FAMILY_FILES = ("gan", "sd", "midjourney", "dalle3")  # the authors' test_annotations_{name}.txt
# One process per stage, one torch thread and one loader worker: the two cores of a laptop-class machine.
CPU = ("--backend", "cpu", "--workers", "1", "--threads", "1")


def run(tool: str, *args: str) -> float:
    """Run `python -m {tool} ARGS` as a user would; returns its wall time in seconds (a failing
    stage ends the demo with its exit status)."""
    module = tool.replace("-", "_")
    print(f"\n$ {tool} {shlex.join(args)}", flush=True)
    started = time.monotonic()
    run_command([sys.executable, "-m", module, *args])
    return time.monotonic() - started


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="Folder for the sample, the shards, the runs and the report.")
    parser.add_argument("--count", type=int, default=1000, help="Sample images.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample and the training.")
    parser.add_argument("--epochs", type=int, default=20, help="SelfCon epochs.")
    return parser


def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    out = args.out
    data, shards = out / "sample", out / "shards"
    seconds: dict[str, float] = {}
    seconds["sample"] = run("imaginet-shards", "sample", str(data), "--count", str(args.count),
                            "--seed", str(args.seed))
    seconds["pack+verify"] = 0.0
    for split in SPLITS:
        seconds["pack+verify"] += run("imaginet-shards", "pack", "--root", str(data), "--annotations",
                                      str(data / f"{split}.txt"), "--out", str(shards / split),
                                      "--max-count", "100", "--overwrite")
        seconds["pack+verify"] += run("imaginet-shards", "verify", str(shards / split), "--decode")
    seconds["inspect"] = run("imaginet-shards", "inspect", str(shards / "train"),
                             "--json", str(out / "inspect-train.json"))
    seconds["selfcon"] = run("imaginet-train", "selfcon", str(shards / "train"), "--out", str(out / "selfcon"),
                             "--arch", "small", "--epochs", str(args.epochs), "--batch-size", "64",
                             "--lr", "0.05", "--seed", str(args.seed), "--checkpoint-every", "5", *CPU)
    # Batches of 64, not 200: the sample's calibration split has about 200 images.
    seconds["linear"] = run("imaginet-train", "linear", str(out / "selfcon" / "checkpoint.pt"),
                            str(shards / "calibration"), "--out", str(out / "linear"), "--epochs", "10",
                            "--lr", "1e-3", "--batch-size", "64", "--seed", str(args.seed), *CPU)
    # Every other sweep point (the reference's: JPEG 40:100:5, resize 2:12:1) keeps the demo short.
    families = write_family_files(data / "test.txt", out / "families", args.seed)
    seconds["evaluate"] = run("imaginet-train", "evaluate", str(out / "linear" / "heads.pt"), str(shards / "test"),
                              "--out", str(out / "evaluate"), "--platt", str(shards / "calibration"),
                              *(a for name, path in families for a in ("--family-file", f"{name}={path}")),
                              "--jpeg-qualities", "40:100:10", "--resize-divisors", "2,3,4,6,8,12", *CPU)
    seconds["total"] = time.monotonic() - started
    results = write_report(out, shards / "test", seconds)
    print(f"\ndemo finished in {seconds['total']:.0f} s: origin ROC AUC {_f(results['origin_auc'])} "
          f"(mean over families {_f(results['origin_mean_auc'])}, Platt balanced accuracy "
          f"{_f(results['origin_mean_balanced_accuracy_platt'])}), family balanced accuracy "
          f"{_f(results['family_balanced_accuracy'])}, trivial baseline AUC {_f(results['trivial_baseline_auc'])}; "
          f"report {out / 'report.md'}")


def write_family_files(test: Path, folder: Path, seed: int) -> list[tuple[str, Path]]:
    """Per-family test files as the authors' test_annotations_{family}.txt: each family's synthetic
    rows of `test` with as many random real rows."""
    lines = [line for line in test.read_text().splitlines() if line.strip()]
    real = [line for line in lines if line.split(",")[1] == "0"]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for family, name in enumerate(FAMILY_FILES):
        synthetic = [line for line in lines if line.split(",")[1] == "1" and line.split(",")[3] == str(family)]
        if synthetic:
            chosen = [real[i] for i in sorted(rng.permutation(len(real))[:len(synthetic)])]
            path = folder / f"test_annotations_{name}.txt"
            path.write_text("\n".join(synthetic + chosen) + "\n")
            files.append((name, path))
    return files


def write_report(out: Path, test_shards: Path, seconds: dict[str, float]) -> dict:
    """OUT/results.json (headline metrics, baselines, timings) and OUT/report.md (tables and plots)."""
    from imaginet_train.baselines import trivial_baselines
    from imaginet_train.plots import curve_plot
    from imaginet_train.runlog import read_records

    evaluation = json.loads((out / "evaluate" / "evaluation.json").read_text())
    baselines = trivial_baselines(str(test_shards))
    epochs = read_records(out / "selfcon", "epoch")
    curve_plot({"selfcon loss": ([r["epoch"] for r in epochs], [r["loss"] for r in epochs])},
               "epoch", "loss", out / "selfcon_loss.png")
    origin_mean, identification_mean = evaluation["tables"]["origin"][-1], evaluation["tables"]["identification"][-1]
    keys = ("origin_auc", "origin_balanced_accuracy", "origin_balanced_accuracy_platt", "origin_average_precision",
            "family_balanced_accuracy")
    results = {**{k: evaluation[k] for k in keys}, "origin_mean_auc": origin_mean["auc"],
               "origin_mean_balanced_accuracy_platt": origin_mean["balanced_accuracy_platt"],
               "identification_mean_balanced_accuracy": identification_mean["balanced_accuracy"],
               "identification_macro_auc": identification_mean["auc"],
               "trivial_baseline_auc": baselines["file_size"],
               "trivial_baselines": baselines, "test_images": evaluation["count"],
               "selfcon_images_per_s": epochs[-1]["images_per_s"],
               "selfcon_data_fraction": epochs[-1]["data_fraction"],
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    headline = (*keys, "origin_mean_auc", "origin_mean_balanced_accuracy_platt",
                "identification_mean_balanced_accuracy", "identification_macro_auc", "trivial_baseline_auc")
    lines = [
        "# imaginet demo", "",
        "SelfCon (small arch, CPU) on the embedded sample; heads on the calibration split (which also "
        "fits the Platt scaling); the test split in the paper's tables, with per-family files written "
        "as the authors' (each family's synthetic images and as many random real ones).", "",
        "| metric (whole test split, then means over the tables' rows) | value |", "| --- | --- |",
        *(f"| {k.replace('_', ' ')} | {_f(results[k])} |" for k in headline),
        *(f"| trivial baseline: {k.replace('_', ' ')} AUC | {_f(v)} |" for k, v in baselines.items()), "",
        "## The paper's tables", "",
        *(out / "evaluate" / "report.md").read_text().splitlines(), "",
        "## Plots", "",
        "![selfcon loss](selfcon_loss.png)", "![JPEG sweep](evaluate/sweep_jpeg.png)",
        "![resize sweep](evaluate/sweep_resize.png)", "![family confusion](evaluate/family_confusion.png)", "",
        "## Wall time per stage (s)", "",
        "| stage | seconds |", "| --- | --- |", *(f"| {k} | {v:.0f} |" for k, v in seconds.items()), "",
        f"SelfCon throughput (last epoch): {results['selfcon_images_per_s']:.0f} images/s, "
        f"{results['selfcon_data_fraction']:.0%} of step time waiting for data.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    run_tool(parser(), main)
