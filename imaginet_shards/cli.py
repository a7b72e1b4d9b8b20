"""`imaginet-shards`: thin click commands over the library functions, and `CommandGroup`, the click
group both command lines use for the conventions of `cli_common` (exit statuses, -v/-q, errors)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from imaginet_shards.bench.cli import JSON_TARGET, bench_options, run_bench_command
from imaginet_shards.cli_common import (
    EXIT_ERROR,
    EXIT_HELP,
    EXIT_OK,
    EXIT_PROBLEMS,
    QUIET_HELP,
    VERBOSE_HELP,
    configure_logging,
    user_error_message,
    write_json,
)


class CommandError(click.ClickException):
    """A command could not run: click prints `Error: MESSAGE` and exits with status 2."""

    exit_code = EXIT_ERROR


class CommandGroup(click.Group):
    """A click group whose `-v/--verbose` and `-q/--quiet` configure logging once for whichever
    command runs, and whose commands end on a user error (see `cli_common.user_error_message`)
    with one `Error: …` line and status 2 instead of a traceback."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("epilog", EXIT_HELP)
        super().__init__(*args, **kwargs)
        self.params += [click.Option(["-v", "--verbose"], count=True, help=VERBOSE_HELP),
                        click.Option(["-q", "--quiet"], is_flag=True, help=QUIET_HELP)]

    def invoke(self, ctx: click.Context) -> Any:
        restore = configure_logging(ctx.params.pop("verbose"), ctx.params.pop("quiet"))
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise
            raise CommandError(message) from None
        finally:
            restore()


def version_option(prog_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--version`, as click's, but the version is looked up only when asked for: the lookup
    (importlib.metadata) would otherwise cost every command, `--help` included, ~0.1 s."""

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            import imaginet_shards

            click.echo(f"{prog_name}, version {imaginet_shards.__version__}")
            ctx.exit()

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True,
                        callback=show, help="Show the version and exit.")


@click.group(cls=CommandGroup)
@version_option("imaginet-shards")
@click.option("--endpoint-url", metavar="URL", envvar="AWS_ENDPOINT_URL",
              help="S3-compatible endpoint for s3:// locations (default: $AWS_ENDPOINT_URL); "
                   "sets AWS_ENDPOINT_URL for this command, its workers and DALI.")
def main(endpoint_url: str | None) -> None:
    """Pack ImagiNet into WebDataset shards with DALI indexes, verify, inspect and load them.

    Shard sets are local directories or s3://, gs://, http(s):// URLs (read-only for http)."""
    if endpoint_url:  # the command's own process: the library reads the environment, never writes it
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url


@main.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Write the schema here instead of printing it.")
def schema(out: Path | None) -> None:
    """Print the label schema (columns, vocabularies, tracks) as JSON."""
    from imaginet_shards.format.annotations import schema_json
    text = schema_json()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)


def _annotation_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from imaginet_shards.format.annotations import ANNOTATION_FORMATS
    if value not in ANNOTATION_FORMATS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(ANNOTATION_FORMATS)}")
    return value


def annotation_format_option(function: Any) -> Any:
    """`--annotation-format`, shared by the commands that read annotation files (validated when
    used, so that the CLI starts without importing the annotation parser)."""
    return click.option(
        "--annotation-format", default="imaginet", show_default=True, callback=_annotation_format,
        help="Format of the annotation file: imaginet (path,origin,content,family,generator), or a "
             "zero-shot test set's path,label,generator | path,label | path-label (`path label`, "
             "whitespace-separated); the labels these do not give are stored as -1 (unknown). "
             "Never guessed; a line in another format is reported with the format it reads as.")(function)


@main.command("check-annotations")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--all-errors", is_flag=True, help="Report every bad line, not just the first.")
@annotation_format_option
def check_annotations(files: tuple[Path, ...], all_errors: bool, annotation_format: str) -> None:
    """Validate annotation files and print their label counts."""
    from imaginet_shards.format.annotations import AnnotationError, read_annotations
    failed = False
    for path in files:
        try:
            frame = read_annotations(path, collect=all_errors, annotation_format=annotation_format)
        except AnnotationError as exc:
            click.echo(str(exc), err=True)
            failed = True
            continue
        real = int((frame["origin"] == 0).sum())
        click.echo(f"{path}: {len(frame)} rows ({real} real, {len(frame) - real} synthetic)")
    sys.exit(EXIT_PROBLEMS if failed else EXIT_OK)


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", default=1000, show_default=True, help="Images in all three splits together.")
@click.option("--seed", default=0, show_default=True, help="Fixes every byte of the dataset.")
@click.option("--max-side", default=384, show_default=True,
              help="Scale of the sources' typical sizes (1024: realistic sizes).")
@click.option("--formats", type=click.Choice(["balanced", "realistic"]), default="balanced",
              show_default=True,
              help="balanced: format, quality and size independent of the class; realistic: each "
                   "source's own format and size (every WebP image is synthetic).")
@click.option("--workers", default=1, show_default=True, help="Processes rendering images.")
def sample(out: Path, count: int, seed: int, max_side: int,
           formats: Literal["balanced", "realistic"], workers: int) -> None:
    """Write the embedded stand-in ImagiNet dataset under OUT, with train/calibration/test.txt."""
    from imaginet_shards.sample import SampleOptions, write_sample
    summary = write_sample(out, SampleOptions(count=count, seed=seed, max_side=max_side,
                                              formats=formats, workers=workers))
    click.echo(str(summary))


def parse_size(text: str) -> int:
    """'512MB', '1.5GiB', '1000000' → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGTIB")
    try:
        return int(float(number) * units[stripped[len(number):]])
    except (KeyError, ValueError):
        raise click.BadParameter(f"{text!r} is not a size (e.g. 512MB, 1GiB)") from None


@main.command()
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset root the annotation paths are relative to.")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotation file (see --annotation-format).")
@annotation_format_option
@click.option("--out", required=True, help="Destination directory or s3:// / gs:// URL prefix.")
@click.option("--prefix", default="imaginet", show_default=True, help="Shard file name prefix.")
@click.option("--max-count", default=2000, show_default=True, help="Samples per shard at most.")
@click.option("--max-size", default="512MB", show_default=True, help="Bytes per shard at most.")
@click.option("--workers", default=2, show_default=True, help="Processes writing shards.")
@click.option("--seed", default=0, show_default=True, help="Seed of the stratified sample order.")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
              help="Bad input file: stop with its path, or skip it and list it in the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace a different shard set already at --out.")
def pack(root: Path, annotations: Path, annotation_format: str, out: str, prefix: str, max_count: int,
         max_size: str, workers: int, seed: int, on_error: Literal["raise", "skip"], overwrite: bool) -> None:
    """Pack annotated images into WebDataset shards with DALI indexes and a manifest."""
    import time

    from imaginet_shards.ops.pack import PackOptions
    from imaginet_shards.ops.pack import pack as run_pack
    started = time.monotonic()
    options = PackOptions(root=root, annotations=annotations, out=out, prefix=prefix,
                          max_count=max_count, max_size=parse_size(max_size), workers=workers,
                          seed=seed, on_error=on_error, overwrite=overwrite,
                          annotation_format=annotation_format)
    manifest = run_pack(options)
    seconds = time.monotonic() - started
    total = manifest.totals
    click.echo(f"{out}: {total['samples']} samples in {total['shards']} shards, "
               f"{total['bytes'] / 1e6:.1f} MB in {seconds:.1f} s "
               f"({total['bytes'] / 1e6 / max(seconds, 1e-9):.1f} MB/s); "
               f"{total['skipped']} skipped")
    for skipped in manifest.skipped[:10]:
        click.echo(f"  skipped line {skipped.line}: {skipped.path}: {skipped.reason}")
    if len(manifest.skipped) > 10:
        click.echo(f"  … {len(manifest.skipped) - 10} more in manifest.json")


@main.command()
@click.argument("dest")
@click.option("--decode", is_flag=True, help="Also decode every image.")
@click.option("--workers", default=2, show_default=True, help="Shards checked in parallel.")
@click.option("--source", metavar="SRC", default=None,
              help="For a tiled set (retile): also check it against the shard set it was made "
                   "from (the tiles hold the source images' pixels, the other images its bytes).")
@click.option("--json", "json_out", type=JSON_TARGET, help="Also write the report as JSON ('-': stdout).")
def verify(dest: str, decode: bool, workers: int, source: str | None, json_out: str | None) -> None:
    """Check a shard set against its manifest; exit 1 listing every problem. A tiled set's tiles
    are always decoded and checked against the pixel checksums its manifest records."""
    from imaginet_shards.ops.verify import verify as run_verify
    report = run_verify(dest, decode=decode, workers=workers, source=source)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}", err=True)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    click.echo(f"{dest}: {status}: {report.shards_checked} shards, {report.samples_checked} samples, "
               f"{report.bytes_checked / 1e6:.1f} MB checked{' and decoded' if decode else ''}",
               err=json_out == "-")
    if json_out is not None:
        write_json(json_out, {"dest": dest, "decoded": decode, **report.to_dict()})
    sys.exit(EXIT_OK if report.ok else EXIT_PROBLEMS)


@main.command()
@click.argument("dest")
@click.option("--json", "json_out", type=JSON_TARGET, help="Also write the report as JSON ('-': stdout).")
def inspect(dest: str, json_out: str | None) -> None:
    """Label, format and size statistics of a shard set, and the confounds a detector could learn."""
    from imaginet_shards.ops.stats import format_report
    from imaginet_shards.ops.stats import inspect as run_inspect
    report = run_inspect(dest)
    click.echo(format_report(report), err=json_out == "-")
    if json_out is not None:
        write_json(json_out, report.to_dict())


@main.command()
@click.argument("src")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--layout", type=click.Choice(["shards", "reference"]), default="shards", show_default=True,
              help="shards: SRC is a shard set, DEST a perturbed copy of it. reference: SRC is the "
                   "dataset root and DEST gets the authors' test-set layout (testset/.../{k:05d}.webp, "
                   "lossless WebP) and test_{gan,sd,midjourney,dalle3}.txt from the four --annotations.")
@click.option("--annotations", "annotation_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --layout reference: the per-family test files, four times, in the order "
                   "gan, sd, midjourney, dalle3 (test_annotations_{gan,sd,midjourney,dalle3}.txt).")
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --layout reference: also pack each test_{family}.txt into SHARDS/{family}.")
@click.option("--preset", default="social", show_default=True, help="Perturbation preset to apply.")
@click.option("--seed", default=0, show_default=True, help="Seed of the per-sample decisions.")
@click.option("--workers", default=2, show_default=True, help="Processes writing shards or images.")
@click.option("--overwrite", is_flag=True, help="Replace a shard set (or a reference layout) already at DEST.")
def perturb(src: str, dest: Path, layout: str, annotation_files: tuple[Path, ...], shards: Path | None,
            preset: str, seed: int, workers: int, overwrite: bool) -> None:
    """Write a copy of the shard set SRC at DEST with a preset applied once per sample, or, with
    --layout reference, the perturbed test set in the ImagiNet authors' layout."""
    if layout == "reference":
        _perturb_reference(Path(src), dest, annotation_files, shards, preset, seed, workers, overwrite)
        return
    if annotation_files or shards is not None:
        raise click.UsageError("--annotations and --shards go with --layout reference")
    from imaginet_shards.ops.perturb import PerturbOptions
    from imaginet_shards.ops.perturb import perturb as run_perturb
    manifest = run_perturb(PerturbOptions(source=src, out=dest, preset=preset, seed=seed,
                                          workers=workers, overwrite=overwrite))
    total = manifest.totals
    click.echo(f"{dest}: {total['samples']} samples in {total['shards']} shards, "
               f"{total['bytes'] / 1e6:.1f} MB ({preset}, seed {seed})")


@main.command()
@click.argument("src")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--tile", default=128, show_default=True, help="Tile side in pixels.")
@click.option("--codec", default="zstd-rows", show_default=True,
              help="How each tile's filtered rows are compressed: zstd-rows (fastest to decode) or "
                   "zlib-rows (the earlier layout's codec).")
@click.option("--webp", is_flag=True, help="Tile WebP images too (lossy ones decoded once); "
                                           "without it they keep their bytes.")
@click.option("--jpeg", is_flag=True, help="Tile JPEG images too (decoded once, as the loaders "
                                           "decode them): more bytes, less CPU per crop; without "
                                           "it they keep their bytes.")
@click.option("--workers", default=2, show_default=True, help="Processes writing shards.")
@click.option("--overwrite", is_flag=True, help="Replace a shard set already at DEST.")
def retile(src: str, dest: Path, tile: int, codec: str, webp: bool, jpeg: bool, workers: int,
           overwrite: bool) -> None:
    """Write the tiled training layout of the shard set SRC at DEST: PNG images (and WebP with
    --webp, JPEG with --jpeg) as tiles that a crop decodes only where it needs them; same shards,
    keys and labels."""
    import time

    from imaginet_shards.ops.retile import RetileOptions
    from imaginet_shards.ops.retile import retile as run_retile
    started = time.monotonic()
    manifest = run_retile(RetileOptions(source=src, out=dest, tile=tile, codec=codec, webp=webp,
                                        jpeg=jpeg, workers=workers, overwrite=overwrite))
    tiled = len(manifest.options["retile"]["pixels_sha256"])
    click.echo(f"{dest}: {manifest.samples} samples ({tiled} tiled, {tile}-px {codec} tiles) in "
               f"{len(manifest.shards)} shards, {manifest.totals['bytes'] / 1e6:.1f} MB in "
               f"{time.monotonic() - started:.1f} s")


def _perturb_reference(root: Path, dest: Path, annotation_files: tuple[Path, ...], shards: Path | None,
                       preset: str, seed: int, workers: int, overwrite: bool) -> None:
    from imaginet_shards.format.annotations import AnnotationError
    from imaginet_shards.ops.pack import PackError
    from imaginet_shards.ops.testset import ReferenceTestsetOptions, write_reference_testset
    try:
        written = write_reference_testset(ReferenceTestsetOptions(
            root=root, annotations=annotation_files, out=dest, preset=preset, seed=seed,
            workers=workers, overwrite=overwrite, shards=shards))
    except (AnnotationError, PackError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{dest}: {len(written.items)} images ({preset}, seed {seed}); "
               + ", ".join(f"{path.name} {len(path.read_text().splitlines())} lines" for path in written.files))
    for family, manifest in written.manifests.items():
        click.echo(f"  {shards}/{family}: {manifest.samples} samples in {len(manifest.shards)} shards")


@main.command()
@bench_options
@click.option("--model", hidden=True, help="Moved: `imaginet-train bench --model ARCH`.")
def bench(model: str | None, **options: Any) -> None:
    """Loader throughput matrix: images/s, MB/s, CPU time and peak memory of each backend x device
    x threads x preset x crop, with the tar-read and decode-only stages, medians over repeats.

    The model-in-the-loop diagnosis (is training input-bound?) is `imaginet-train bench --model`."""
    if model is not None:
        raise click.UsageError("--model moved to the trainer: `imaginet-train bench SHARDS "
                               f"--model {model} ...` (same options)")
    run_bench_command(options)
