#!/usr/bin/env python3
"""The README's main command: the whole chain on the embedded sample dataset.

    make demo            # = python tools/demo.py --out runs/demo

sample → pack (one shard set per split) → verify → inspect → selfcon (small arch, CPU) → linear
(heads on the calibration split) → evaluate (test split, robustness sweeps), each stage through the
same command a user would type; then a report: OUT/report.md with plots, and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from imaginet_shards.cli_common import run_command, run_tool

SPLITS = ("train", "calibration", "test")
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
    seconds["linear"] = run("imaginet-train", "linear", str(out / "selfcon" / "checkpoint.pt"),
                            str(shards / "calibration"), "--out", str(out / "linear"), "--epochs", "10",
                            "--lr", "1e-3", "--seed", str(args.seed), *CPU)
    seconds["evaluate"] = run("imaginet-train", "evaluate", str(out / "linear" / "heads.pt"), str(shards / "test"),
                              "--out", str(out / "evaluate"), "--jpeg-qualities", "40:100:10",
                              "--resize-scales", "0.5,0.75,1,1.5", *CPU)
    seconds["total"] = time.monotonic() - started
    results = write_report(out, shards / "test", seconds)
    print(f"\ndemo finished in {seconds['total']:.0f} s: origin ROC AUC {results['origin_auc']:.3f}, "
          f"family balanced accuracy {results['family_balanced_accuracy']:.3f}, trivial baseline AUC "
          f"{results['trivial_baseline_auc']:.3f}; report {out / 'report.md'}")


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
    keys = ("origin_auc", "origin_balanced_accuracy", "origin_average_precision", "family_balanced_accuracy")
    results = {**{k: evaluation[k] for k in keys}, "trivial_baseline_auc": baselines["file_size"],
               "trivial_baselines": baselines, "test_images": evaluation["count"],
               "selfcon_images_per_s": epochs[-1]["images_per_s"],
               "selfcon_data_fraction": epochs[-1]["data_fraction"],
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [f"| {g['group']} | {g['name']} | {g['count']} | {_f(g['origin_auc'])} | "
            f"{_f(g['origin_balanced_accuracy'])} | {_f(g['family_balanced_accuracy'])} |"
            for g in evaluation["per_group"]]
    lines = [
        "# imaginet demo", "",
        f"SelfCon (small arch, CPU) on the embedded sample; heads on the calibration split; "
        f"{evaluation['count']} test images ({evaluation['real']} real, {evaluation['synthetic']} synthetic).", "",
        "| metric | value |", "| --- | --- |",
        *(f"| {k.replace('_', ' ')} | {_f(results[k])} |" for k in (*keys, "trivial_baseline_auc")),
        *(f"| trivial baseline: {k.replace('_', ' ')} AUC | {_f(v)} |" for k, v in baselines.items()), "",
        "## Per generator (its images against all real images) and per content type", "",
        "| group | name | n | origin AUC | origin balanced acc. | family balanced acc. |",
        "| --- | --- | --- | --- | --- | --- |", *rows, "",
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
