"""Benchmark report, one command from a clean clone:

    python tools/bench_report.py

generates the sample dataset at realistic sizes (max side 1024, realistic format mix) and packs it
(both reused when `--work` already holds them, via `bench_loaders.prepare`), runs one
`imaginet-shards bench` matrix over it (every backend at 1 and 2 threads, tar-read and
decode-only stages, the `small` model in the loop) in a fresh process, and writes
`docs/benchmarks.md` (tables, the commands, machine information) and `docs/benchmarks-threads.png`
(images/s against threads per backend, with the decode-only bounds). About five minutes on two
cores.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from bench_loaders import prepare
from imaginet_shards.cli_common import run_command, run_tool

BACKENDS = ("files", "cpu", "dali")


def bench_command(args: argparse.Namespace, root: Path, annotations: Path, shards: Path,
                  out: Path) -> list[str]:
    """The bench matrix command the report is made from: `imaginet-shards bench`, or
    `imaginet-train bench` with a model in the loop."""
    module = "imaginet_train" if args.model else "imaginet_shards"
    command = [sys.executable, "-m", module, "bench", str(shards),
               "--root", str(root), "--annotations", str(annotations),
               "--batch-size", str(args.batch_size), "--batches", str(args.batches),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--decode-images", str(args.decode_images), "--json", str(out)]
    for backend in args.backends.split(","):
        command += ["--backend", backend]
    for threads in args.threads.split(","):
        command += ["--threads", threads]
    if args.model:
        command += ["--model", args.model, "--model-steps", str(args.model_steps)]
    return command


def decode_bound(report: dict, backend: str, threads: int) -> float | None:
    """Decode-only images/s of `backend` at `threads` on the dataset's format mix (the time per
    image is the mix-weighted mean of the per-format times), or None when not measured."""
    rates = {d["format"]: d["images_per_sec"] for d in report["decode"]
             if d["backend"] == backend and d["threads"] == threads}
    mix = report["formats"]
    if not rates or set(rates) != set(mix):
        return None
    total = sum(mix.values())
    return 1 / sum(n / total / rates[fmt] for fmt, n in mix.items())


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def full_table(report: dict) -> str:
    """Full-pipeline rows with speed-up over `files` at the same threads and share of the bound."""
    base = {r["threads"]: r["images_per_sec"] for r in report["full"] if r["backend"] == "files"}
    rows = []
    for r in report["full"]:
        bound = decode_bound(report, r["backend"], r["threads"])
        runs = r["images_per_sec_runs"]
        rows.append([r["backend"], r["threads"], f"{r['images_per_sec']:.1f}",
                     f"{min(runs):.1f}-{max(runs):.1f}",
                     f"{r['images_per_sec'] / base[r['threads']]:.2f}x"
                     if r["threads"] in base else "-",
                     f"{r['mb_per_sec']:.1f}", f"{r['cpu_ms_per_image']:.1f}",
                     f"{r['cpu_utilisation']:.2f}", f"{r['peak_rss_mb']:.0f}",
                     f"{r['peak_pss_mb']:.0f}",
                     f"{r['images_per_sec'] / bound:.0%}" if bound else "-"])
    return _table(["backend", "threads", "images/s (median)", "range", "vs files", "MB/s",
                   "CPU ms/image", "CPU cores busy", "peak RSS MB", "peak PSS MB",
                   "of decode-only bound"], rows)


def decode_table(report: dict) -> str:
    """Decode-only images/s (CPU ms/image) per backend, threads and format, plus the mix bound."""
    formats = list(report["formats"])
    cells = {(d["backend"], d["threads"], d["format"]): d for d in report["decode"]}
    rows = []
    for backend, threads in dict.fromkeys((d["backend"], d["threads"]) for d in report["decode"]):
        row = [backend, threads]
        for fmt in formats:
            d = cells[(backend, threads, fmt)]
            row.append(f"{d['images_per_sec']:.1f} ({d['cpu_ms_per_image']:.1f})")
        bound = decode_bound(report, backend, threads)
        rows.append(row + [f"{bound:.1f}" if bound else "-"])
    return _table(["backend", "threads", *[f"{f} images/s (CPU ms)" for f in formats],
                   "mix bound images/s"], rows)


def model_table(report: dict) -> str:
    rows = [[m["backend"], m["threads"], m["arch"], f"{m['model_images_per_sec']:.1f}",
             f"{m['loop_images_per_sec']:.1f}", f"{m['input_bound_fraction']:.0%}",
             f"{m['wait_fraction']:.0%}",
             m["threads_needed"] if m["threads_needed"] is not None else "not reached"]
            for m in report["model"]]
    return _table(["backend", "threads", "model", "model alone images/s",
                   "model + loader images/s", "time lost to input", "time waiting for batches",
                   "threads needed"], rows)


def plot(report: dict, path: Path) -> None:
    """Images/s against threads: one solid line per backend, its decode-only mix bound dashed,
    and the best decode-only rate per format dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    ran = [b for b in BACKENDS if any(r["backend"] == b for r in report["full"])]
    for i, backend in enumerate(ran):
        colour = f"C{i}"
        runs = sorted((r["threads"], r["images_per_sec"]) for r in report["full"]
                      if r["backend"] == backend)
        ax.plot(*zip(*runs), "o-", color=colour, label=f"{backend} full pipeline")
        bounds = [(t, decode_bound(report, backend, t)) for t, _ in runs]
        bounds = [(t, b) for t, b in bounds if b]
        if bounds:
            ax.plot(*zip(*bounds), "s--", color=colour, alpha=0.6,
                    label=f"{backend} decode-only (format mix)")
    for j, fmt in enumerate(report["formats"]):
        best: dict[int, float] = {}
        for d in report["decode"]:
            if d["format"] == fmt:
                best[d["threads"]] = max(best.get(d["threads"], 0), d["images_per_sec"])
        if best:
            ax.plot(*zip(*sorted(best.items())), ":", marker="^", color=f"C{j + 3}",
                    label=f"decode-only {fmt} (fastest backend)")
    ax.set_yscale("log")
    ax.set_xlabel("threads (DALI) / DataLoader workers")
    ax.set_ylabel("images/s")
    ax.set_xticks(sorted({r["threads"] for r in report["full"]}))
    ax.set_title(f"Loader throughput, {report['machine']['cpu']}, "
                 f"{report['machine']['usable_cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The sections of benchmarks.md from this heading on are measured by other commands (they say
# which) and are kept when the report is regenerated.
HAND_MEASURED = "## Measured with other commands"


def markdown(report: dict, command: str, bench: str, plot_name: str) -> str:
    """docs/benchmarks.md."""
    machine, settings = report["machine"], report["settings"]
    packages = ", ".join(f"{k} {v}" for k, v in report["packages"].items() if v)
    mix = ", ".join(f"{n} {fmt}" for fmt, n in report["formats"].items())
    tar = report["tar_read"]
    gpus = ", ".join(machine["gpus"]) or "none"
    sections = [
        "# Loader benchmarks",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by\n\n"
        f"    {command}\n\nwhich ran\n\n    {bench}\n",
        "## Machine",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_gb']} GB RAM; GPUs: {gpus}\n"
        f"- load average when the run started: "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average'])} (the cores are shared with "
        f"other work: images/s is noisy, CPU ms/image less so)\n"
        f"- {machine['os']}, Python {machine['python']}; {packages}",
        "## Settings",
        f"Sample dataset: {sum(report['formats'].values())} images ({mix}), max side 1024, "
        f"realistic formats; preset(s) {', '.join(settings['presets'])}, batch "
        f"{settings['batch_size']}, {settings['warmup']} warm-up batches, then "
        f"{settings['repeats']} repeats of {settings['batches']} batches (figures are medians "
        f"over the repeats). Decode-only: {settings['decode_images']} images per format, one "
        f"warm-up pass, {settings['repeats']} timed passes.",
        "## Full pipeline",
        full_table(report),
        "\"vs files\" is the speed-up over the per-file PIL baseline at the same thread count; "
        "\"of decode-only bound\" compares with the backend's own decode-only rate on the same "
        "format mix. The decode-only stage decodes whole frames, while the `train` pipelines "
        "decode little more than the crop: PNGs and WebPs stop at the crop's last row in both "
        "backends (windows.py), and DALI decodes JPEG crops alone (ROI decoding), so they can "
        "exceed 100 %.",
        f"![images/s against threads]({plot_name})",
        "## Stages",
        f"Tar read only (raw sample bytes through `shardset.read_samples`, one thread): "
        f"{tar['images_per_sec']:.0f} images/s, {tar['mb_per_sec']:.0f} MB/s, "
        f"{tar['cpu_ms_per_image']:.2f} CPU ms/image." if tar else "Tar read: not run.",
        "Decode only, full frames, per format: images/s (CPU ms/image).",
        decode_table(report) if report["decode"] else "Not run.",
    ]
    if report["model"]:
        sections += ["## Model in the loop", model_table(report),
                     "\"Time lost to input\" is 1 - (model + loader rate) / (model alone rate): "
                     "waiting for batches plus, on CPU, the slowdown of sharing the cores with "
                     "the loader (a prefetching loader hands batches over at once, then competes "
                     "for the CPU). \"Threads needed\" is the fewest tested threads whose "
                     "full-pipeline rate reaches the model's rate alone; on a GPU machine the "
                     "model would not compete for these cores."]
    sections += ["## GPU", "This machine has none. Figures from a GPU machine (`tools/gpu_check.py`, "
                 "`tools/gpu_dali_check.py`, `tools/gpu_jpeg_crops.py`, `imaginet-shards bench` "
                 "there) are under \"On a GPU machine\" below."]
    return "\n\n".join(sections) + "\n"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/report"),
                        help="Sample, shards and the raw JSON go here.")
    parser.add_argument("--docs", type=Path, default=Path("docs"),
                        help="Where benchmarks.md and its plot are written.")
    parser.add_argument("--count", type=int, default=300, help="Sample images to generate.")
    parser.add_argument("--backends", default="files,cpu,dali",
                        help="Comma-separated backends (files, cpu, dali).")
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts.")
    parser.add_argument("--batch-size", type=int, default=32, help="Samples per batch.")
    parser.add_argument("--batches", type=int, default=12,
                        help="Batches per timed repeat: several per worker, or bursts skew it.")
    parser.add_argument("--warmup", type=int, default=4, help="Batches drawn before timing.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats (figures are medians).")
    parser.add_argument("--decode-images", type=int, default=128,
                        help="Decode-only images per format (128: all of them in the 300-image sample).")
    parser.add_argument("--model", default="small", help="Model in the loop ('' for none).")
    parser.add_argument("--model-steps", type=int, default=8, help="Timed model steps.")
    return parser


def main(args: argparse.Namespace) -> None:
    root, annotations, shards = prepare(args.work, args.count, 1024, workers=2)
    out = args.work / "matrix.json"
    command = bench_command(args, root, annotations, shards, out)
    run_command(command)
    report = json.loads(out.read_text())
    plot_path = args.docs / "benchmarks-threads.png"
    plot(report, plot_path)
    shown = shlex.join([command[2].replace("_", "-"), *command[3:]])
    text = markdown(report, shlex.join(["python", "tools/bench_report.py", *sys.argv[1:]]), shown,
                    plot_path.name)
    target = args.docs / "benchmarks.md"
    kept = target.read_text().partition(HAND_MEASURED)[1:] if target.exists() else ("", "")
    target.write_text(text + ("\n" + "".join(kept) if kept[0] else ""))
    print(f"wrote {args.docs / 'benchmarks.md'} and {plot_path}")


if __name__ == "__main__":
    run_tool(parser(), main)
