"""The bench matrix's command-line options, shared by `imaginet-shards bench` and `imaginet-train bench`
(which adds the model-in-the-loop diagnosis)."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from imaginet_shards.cli_common import write_json

if TYPE_CHECKING:  # the CLI starts without importing torch
    from imaginet_shards.bench.model import StepFactory

__all__ = ["JSON_TARGET", "bench_options", "run_bench_command"]

JSON_TARGET = click.Path(dir_okay=False, allow_dash=True)  # a file, or "-" for stdout

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(decorators: list[Decorator]) -> Decorator:
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return wrap


bench_options = _apply([
    click.argument("shards"),
    click.option("--backend", "backends", type=click.Choice(["dali", "cpu", "files"]), multiple=True,
                 required=True,
                 help="Shard loaders (dali, cpu) or the per-file PIL baseline (files); repeatable."),
    click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="files: dataset root the annotation paths are relative to."),
    click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="files: annotation file of the images to read."),
    click.option("--threads", multiple=True, type=int, default=(2,), show_default=True,
                 help="DALI threads or DataLoader workers; repeatable."),
    click.option("--preset", "presets", multiple=True, default=("train",), show_default=True,
                 help="Perturbation preset; repeatable."),
    click.option("--crop", "crops", multiple=True, type=int,
                 help="Crop (train) or output size (other presets); repeatable. Default: the preset's."),
    click.option("--device", "devices", multiple=True, default=("cpu",), show_default=True,
                 help="Where batches are delivered (cpu, cuda); repeatable."),
    click.option("--stage", "stages", multiple=True, type=click.Choice(["tar", "decode", "full"]),
                 default=("tar", "decode", "full"), show_default=True,
                 help="Stages timed: tar read only, decode only (per format), full pipeline."),
    click.option("--batch-size", default=64, show_default=True, help="Samples per batch."),
    click.option("--batches", default=30, show_default=True, help="Batches timed per repeat."),
    click.option("--warmup", default=3, show_default=True, help="Batches drawn before timing."),
    click.option("--repeats", default=3, show_default=True, help="Timed repeats (figures are medians)."),
    click.option("--decode-images", default=64, show_default=True, help="Decode-only: images per format."),
    click.option("--seed", default=0, show_default=True, help="Seed of the loaders' order and perturbations."),
    click.option("--json", "json_out", type=JSON_TARGET,
                 help="Also write the results as JSON ('-': stdout, the progress lines go to stderr)."),
])


def run_bench_command(options: dict[str, Any], model: str | None = None, model_steps: int = 10,
                      make_step: StepFactory | None = None) -> None:
    """Run the matrix the options describe, print a line per run (on stderr when the JSON goes to
    stdout), write `--json` if given."""
    from imaginet_shards.bench.matrix import MatrixOptions, run_matrix
    from imaginet_shards.bench.run import BenchOptions
    o = options
    json_out: str | None = o["json_out"]
    base = BenchOptions(backend=o["backends"][0], shards=o["shards"], root=o["root"],
                        annotations=o["annotations"], batch_size=o["batch_size"],
                        batches=o["batches"], warmup=o["warmup"], repeats=o["repeats"],
                        seed=o["seed"])
    matrix = MatrixOptions(base, o["backends"], o["threads"], o["presets"], o["crops"] or (None,),
                           o["devices"], o["stages"], o["decode_images"], model, model_steps)
    report = run_matrix(matrix, log=partial(click.echo, err=json_out == "-"), make_step=make_step)
    if json_out is not None:
        write_json(json_out, report)
