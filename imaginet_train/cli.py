"""`imaginet-train`: thin click commands over the trainer's library functions.

Each command parses its options into a frozen config dataclass, calls one function and prints a
summary. `selfcon` and `ce` run under `torchrun` as they are. The group is `imaginet-shards`' own
(`CommandGroup`): -v/-q, exit statuses 0/1/2 and one `Error:` line for a bad value or input.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from imaginet_shards.bench.cli import bench_options, run_bench_command
from imaginet_shards.cli import CommandGroup, version_option

from .catalog import ARCHS, RECIPES

RECIPE_FIELDS = frozenset(field for recipe in RECIPES.values() for field in recipe)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(*decorators: Decorator) -> Decorator:
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return wrap


runtime_options = _apply(
    click.option("--backend", type=click.Choice(["auto", "dali", "cpu"]), default="auto", show_default=True,
                 help="Loader backend (auto: DALI when usable, else CPU)."),
    click.option("--workers", default=4, show_default=True, help="Loader worker processes / threads."),
    click.option("--amp", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
                 help="bf16 autocast (auto: on CUDA only)."),
    click.option("--channels-last/--no-channels-last", default=True, show_default=True,
                 help="channels_last memory format for model and batches."),
    click.option("--threads", default=0, show_default=True, help="torch intra-op threads (0: torch's default)."),
    click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar and per-epoch lines."),
)
RUNTIME_OPTIONS = ("backend", "workers", "amp", "channels_last", "threads", "progress")


def _split_runtime(options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the command's own options, the RuntimeOptions built once from the shared ones)."""
    from .engine import RuntimeOptions
    runtime = RuntimeOptions(**{k: options.pop(k) for k in RUNTIME_OPTIONS})
    return options, runtime


training_options = _apply(
    click.argument("data"),
    click.option("--out", required=True, help="Run folder (checkpoint.pt, metrics.jsonl)."),
    click.option("--arch", type=click.Choice(ARCHS), default="resnet50nodown", show_default=True,
                 help="Encoder architecture (small: a tiny CPU net for tests and the demo)."),
    click.option("--pretrained", default=None,
                 help="torchvision resnet50 state_dict file, or 'imagenet' to download IMAGENET1K_V2 "
                      "(resnet50 archs)."),
    click.option("--epochs", default=30, show_default=True, help="Training epochs."),
    click.option("--batch-size", default=200, show_default=True, help="Global batch (split over ranks)."),
    click.option("--lr", default=0.005, show_default=True, help="Peak SGD learning rate."),
    click.option("--momentum", default=0.9, show_default=True, help="SGD momentum."),
    click.option("--weight-decay", default=1e-4, show_default=True, help="SGD weight decay."),
    click.option("--warmup-epochs", default=1.0, show_default=True, help="Linear warm-up, then cosine."),
    click.option("--warmup-start-factor", default=1e-4, show_default=True,
                 help="The warm-up starts at lr times this."),
    click.option("--lr-step", type=click.Choice(["batch", "epoch"]), default="batch", show_default=True,
                 help="Move the lr every batch, or once per epoch (the reference); equal at epoch boundaries."),
    click.option("--crop", default=96, show_default=True, help="Training crop side (train preset)."),
    click.option("--seed", default=0, show_default=True,
                 help="Seed of the initialisation, the data order and the perturbations."),
    click.option("--sync-bn/--no-sync-bn", default=False, show_default=True,
                 help="SyncBatchNorm under DDP: BatchNorm statistics over the global batch."),
    click.option("--checkpoint-every", default=1, show_default=True, help="Epochs between checkpoints."),
    click.option("--checkpoint-every-steps", default=0, show_default=True,
                 help="Also checkpoint every N global steps, mid-epoch (0: at epoch ends only)."),
    click.option("--log-every", default=10, show_default=True, help="Steps between metrics.jsonl step records."),
    click.option("--resume", is_flag=True,
                 help="Continue from OUT/checkpoint.pt (same options; mid-epoch checkpoints continue with "
                      "the next batch, on this or another number of processes dividing --batch-size)."),
    click.option("--auto-resume", is_flag=True,
                 help="Resume when OUT/checkpoint.pt exists, else start a new run: one command line for "
                      "every (re)start under a preempting scheduler or torchrun --max-restarts."),
    click.option("--key-log", default=None, hidden=True, metavar="DIR",
                 help="Test mode: every rank appends each step's sample keys to DIR/rank{R}.jsonl."),
    runtime_options,
)


@click.group(cls=CommandGroup)
@version_option("imaginet-train")
def main() -> None:
    """Train and evaluate synthetic-image detectors on imaginet shards."""


@main.command()
@training_options
@click.option("--feat-dim", default=128, show_default=True, help="Projection head output size.")
@click.option("--temperature", default=0.07, show_default=True, help="Contrastive loss temperature.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="Start from a named recipe (paper: the ImagiNet authors' run: 400 epochs, batch 200, "
                   "256 px crops, IMAGENET1K_V2 weights, 10-epoch warm-up, lr stepped per epoch); "
                   "options given on the command line override it.")
def selfcon(**options: Any) -> None:
    """SelfCon pre-training (origin + family supervised contrastive loss) on DATA shards."""
    _train(objective="selfcon", **options)


@main.command()
@training_options
@click.option("--track", type=click.Choice(["origin", "family"]), default="origin", show_default=True,
              help="origin: real vs synthetic; family: 4 generator families (synthetic rows).")
def ce(**options: Any) -> None:
    """Cross-entropy baseline on the same encoder, on DATA shards."""
    _train(objective="ce", **options)


def _train(**options: Any) -> None:
    from .dist import DistEnv
    from .train import TrainConfig, train
    recipe = options.pop("recipe", None)
    if recipe is not None:  # the recipe's values, except for options given explicitly
        context = click.get_current_context()
        options = {k: v for k, v in options.items()
                   if k not in RECIPE_FIELDS or context.get_parameter_source(k) is not ParameterSource.DEFAULT}
    options, runtime = _split_runtime(options)
    result = train(TrainConfig.from_recipe(recipe, runtime=runtime, **options))
    if DistEnv.from_env().is_main:
        click.echo(result.summary())


@main.command()
@click.argument("checkpoint")
@click.argument("data")
@click.option("--out", required=True, help="Output folder (heads.pt, metrics.jsonl).")
@click.option("--epochs", default=5, show_default=True, help="Head training epochs.")
@click.option("--lr", default=1e-4, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", default=1e-3, show_default=True, help="Adam weight decay.")
@click.option("--batch-size", default=200, show_default=True, help="Calibration images per batch.")
@click.option("--size", default=256, show_default=True, help="Calibration preset output side.")
@click.option("--seed", default=0, show_default=True, help="Seed of the heads and the data order.")
@click.option("--adapt-bn/--no-adapt-bn", default=True, show_default=True,
              help="Re-estimate the frozen encoder's BatchNorm statistics on the calibration data "
                   "(its BatchNorm layers in training mode, as the reference).")
@runtime_options
def linear(**options: Any) -> None:
    """Train the origin and family heads on a frozen encoder (CHECKPOINT) with calibration shards (DATA)."""
    from .linear import LinearConfig, train_heads
    options, runtime = _split_runtime(options)
    result = train_heads(LinearConfig(runtime=runtime, **options))
    click.echo(f"heads trained for {len(result.epochs)} epoch(s), last loss {result.epochs[-1].loss:.4f} -> "
               f"{result.heads}")


def _numbers(kind: type) -> Callable[[click.Context, click.Parameter, str], tuple]:
    """A click callback parsing 'a,b,c' or 'start:stop:step' (inclusive) into a tuple; 'none' is empty."""
    def parse(ctx: click.Context, param: click.Parameter, text: str) -> tuple:
        text = text.strip()
        if text.lower() == "none":
            return ()
        try:
            if ":" in text:
                start, stop, step = (kind(p) for p in text.split(":"))
                if step <= 0:
                    raise ValueError("step must be > 0")
                count = int((stop - start) / step + 1e-9) + 1
                return tuple(kind(round(start + i * step, 9)) for i in range(max(count, 0)))
            return tuple(kind(p) for p in text.split(","))
        except ValueError as exc:
            raise click.BadParameter(f"{text!r}: expected 'a,b,c', 'start:stop:step' or 'none' ({exc})") from None
    return parse


def _family_files(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple:
    """NAME=FILE pairs."""
    pairs = []
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not file:
            raise click.BadParameter(f"{value!r}: expected NAME=FILE, e.g. gan=test_annotations_gan.txt")
        pairs.append((name, file))
    return tuple(pairs)


@main.command()
@click.argument("checkpoint")
@click.argument("data")
@click.option("--out", required=True, help="Output folder (evaluation.json, report.md, CSVs, PNG plots).")
@click.option("--preset", type=click.Choice(["eval", "social"]), default="eval", show_default=True,
              help="Preset of the clean pass (eval for an already perturbed test set).")
@click.option("--size", default=256, show_default=True, help="Preset output side.")
@click.option("--batch-size", default=64, show_default=True, help="Images per batch.")
@click.option("--platt", default=None, metavar="SHARDS",
              help="Calibration shard set: fit Platt scaling on its origin logits (the reference uses 80 "
                   "images of the perturbed test set) and report calibrated balanced accuracy.")
@click.option("--family-file", "family_files", multiple=True, callback=_family_files, metavar="NAME=FILE",
              help="Per-family annotation file (NAME: gan, sd, midjourney, dalle3), e.g. "
                   "gan=test_annotations_gan.txt; repeat for each family. Images are matched by source "
                   "path. Without: each family with an equal number of random real images.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random real images paired with groups.")
@click.option("--jpeg-qualities", default="40:100:5", show_default=True, callback=_numbers(int),
              help="JPEG sweep qualities: 'a,b,c', 'start:stop:step' or 'none'.")
@click.option("--resize-divisors", default="2:12:1", show_default=True, callback=_numbers(int),
              help="Resize sweep: for each i, the centre crop of side SIZE*12/i resized to SIZE (scale 12/i); "
                   "'a,b,c', 'start:stop:step' or 'none'.")
@runtime_options
def evaluate(**options: Any) -> None:
    """Evaluate a detector (CHECKPOINT = heads.pt from `linear`) on test shards (DATA)."""
    from .evaluate import EvalConfig
    from .evaluate import evaluate as run
    options, runtime = _split_runtime(options)
    click.echo(run(EvalConfig(runtime=runtime, **options)).summary())


@main.command()
@bench_options
@click.option("--model", type=click.Choice(ARCHS), required=True,
              help="Run this model's SelfCon step on the loader's batches: is training input-bound?")
@click.option("--model-steps", default=10, show_default=True, help="Timed model steps.")
def bench(model: str, model_steps: int, **options: Any) -> None:
    """The loader bench matrix (as `imaginet-shards bench`) with the model in the loop: how much of a
    training step's time goes to waiting for input, and how many loader threads the model needs."""
    from .bench import selfcon_step
    run_bench_command(options, model, model_steps, selfcon_step)
