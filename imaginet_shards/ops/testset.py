"""`perturb --layout reference`: the perturbed ("social network") test set laid out file for file
as the ImagiNet authors' test-set builder lays it out, so that their annotation files
(`test_all.txt`, `test_calibration.txt`, ...) name the files written here.

Every line of the four per-family test files (gan, sd, midjourney, dalle3, in that order; file
order, repeated lines included) becomes one image, numbered k = 0, 1, ... across the four files and
written as `testset/{content}/{real|synthetic}[/{family}]/{k:05d}.webp`: lossless WebP of the
source image perturbed by the preset (`social`). A synthetic image is listed in the annotation file
of its family, a real one in that of the file it came from: `test_{gan,sd,midjourney,dalle3}.txt`,
lines `./testset/...webp,origin,content,family,generator`, in the order of k.

The decisions for image k are drawn from (seed, k), so the output is identical whatever the worker
count; the pixels are not the authors' (their draws depend on their data-loader workers). Images
are written under temporary names and renamed; the annotation files are written last, so an
interrupted run never looks complete.
"""
from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from imaginet_shards.augment.cpu import apply_ops, decode_for
from imaginet_shards.augment.spec import Preset, get_preset
from imaginet_shards.format.annotations import (
    LABEL_COLUMNS,
    VOCABULARIES,
    format_line,
    read_annotations,
    resolve_inside,
)
from imaginet_shards.format.manifest import Manifest
from imaginet_shards.loaders.world import sample_rng
from imaginet_shards.ops.pack import PackOptions, pack
from imaginet_shards.ops.perturb import worker_map

REFERENCE_FAMILIES: tuple[str, ...] = ("gan", "sd", "midjourney", "dalle3")
TESTSET_DIR = "testset"
NUMBER_DIGITS = 5
CHUNK = 64  # images a worker renders per task


@dataclass(frozen=True)
class TestsetItem:
    """One output image: its number k, its source (dataset path, annotation file and line) and
    labels."""

    number: int
    source: str
    source_file: str
    file_index: int
    line: int
    labels: tuple[int, int, int, int]

    @property
    def path(self) -> str:
        """Where the image goes, relative to the output directory."""
        return reference_path(self.number, self.labels)

    @property
    def listed_in(self) -> str:
        """The annotation file that lists it: its family's if synthetic, its source file's if real."""
        origin, _, family, _ = self.labels
        return f"test_{REFERENCE_FAMILIES[family if origin == 1 else self.file_index]}.txt"

    @property
    def key(self) -> str:
        """The name its perturbation decisions are drawn for (with the seed)."""
        return f"{self.number:0{NUMBER_DIGITS}d}"


def reference_path(number: int, labels: Sequence[int]) -> str:
    """`testset/{content}/{real|synthetic}[/{family}]/{number:05d}.webp`."""
    origin, content, family, _ = labels
    parts = [TESTSET_DIR, VOCABULARIES["content"][content], VOCABULARIES["origin"][origin]]
    if origin == 1:
        parts.append(REFERENCE_FAMILIES[family])
    return "/".join([*parts, f"{number:0{NUMBER_DIGITS}d}.webp"])


def plan_testset(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> list[TestsetItem]:
    """The images of the four parsed files (`frames`, every line kept, named `names`), numbered
    consecutively over them in file and line order."""
    if len(frames) != len(REFERENCE_FAMILIES) or len(names) != len(frames):
        raise ValueError(f"expected the {len(REFERENCE_FAMILIES)} per-family test files "
                         f"({', '.join(REFERENCE_FAMILIES)}), got {len(frames)}")
    items: list[TestsetItem] = []
    for file_index, (frame, name) in enumerate(zip(frames, names)):
        for row in frame.sort_values("line").itertuples(index=False):
            origin, content, family, generator = (int(getattr(row, c)) for c in LABEL_COLUMNS)
            items.append(TestsetItem(len(items), str(row.path), name, file_index, int(row.line),
                                     (origin, content, family, generator)))
    return items


def annotation_files(items: Sequence[TestsetItem]) -> dict[str, str]:
    """The text of each `test_{family}.txt` (all four, possibly empty), lines in the order of k."""
    lines: dict[str, list[str]] = {f"test_{family}.txt": [] for family in REFERENCE_FAMILIES}
    for item in sorted(items, key=lambda i: i.number):
        lines[item.listed_in].append(format_line(item.path, item.labels))
    return {name: "".join(f"{line}\n" for line in text) for name, text in lines.items()}


def encode_lossless_webp(image: torch.Tensor) -> bytes:
    """uint8 [3, H, W] -> lossless WebP bytes (PIL's defaults otherwise, as the reference saves)."""
    out = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(out, "WEBP", lossless=True)
    return out.getvalue()


def render_item(item: TestsetItem, root: Path, out: Path, preset: Preset, seed: int) -> None:
    """Perturb one source image and write it at its reference path (temporary name, then renamed)."""
    target = out / item.path
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        data = resolve_inside(root, item.source).read_bytes()
        image, _, remaining = decode_for(data, preset, sample_rng(seed, item.key, None))
        encoded = encode_lossless_webp(apply_ops(image, remaining))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{item.source_file}:{item.line}: {item.source}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(encoded)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _render_chunk(items: Sequence[TestsetItem], root: str, out: str, preset: Preset, seed: int) -> int:
    for item in items:
        render_item(item, Path(root), Path(out), preset, seed)
    return len(items)


@dataclass(frozen=True)
class ReferenceTestsetOptions:
    """The dataset `root`, the four per-family test files (gan, sd, midjourney, dalle3, in that
    order), the output directory `out`, the preset and seed of the decisions, `workers` processes
    (1: in this process); `shards`: also pack each written `test_{family}.txt` into the shard set
    `shards/{family}`."""

    root: Path
    annotations: tuple[Path, ...]
    out: Path
    preset: str = "social"
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    shards: Path | None = None

    def __post_init__(self) -> None:
        if len(self.annotations) != len(REFERENCE_FAMILIES):
            raise ValueError(f"the reference layout needs the {len(REFERENCE_FAMILIES)} per-family "
                             f"test files in the order {', '.join(REFERENCE_FAMILIES)}; got "
                             f"{len(self.annotations)}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ReferenceTestset:
    """What was written: the images (in the order of k), the annotation files and the shard sets."""

    items: tuple[TestsetItem, ...]
    files: tuple[Path, ...]
    manifests: dict[str, Manifest]


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [p for p in [out / TESTSET_DIR, *(out / f"test_{f}.txt" for f in REFERENCE_FAMILIES)]
                if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds {', '.join(p.name for p in existing)}; pass --overwrite")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_reference_testset(options: ReferenceTestsetOptions) -> ReferenceTestset:
    """Perturb the four files' images into the reference layout at options.out (see the module)."""
    root, out = Path(options.root), Path(options.out)
    if not root.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    preset = get_preset(options.preset)
    frames = [read_annotations(path, keep_duplicates=True) for path in options.annotations]
    items = plan_testset(frames, [str(path) for path in options.annotations])
    for item in items:
        try:
            if not resolve_inside(root, item.source).is_file():
                raise ValueError("no such regular file")
        except ValueError as exc:
            raise ValueError(f"{item.source_file}:{item.line}: {item.source}: {exc}") from None
    _prepare(out, options.overwrite)
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    columns = (chunks, [str(root)] * len(chunks), [str(out)] * len(chunks), [preset] * len(chunks),
               [options.seed] * len(chunks))
    with ExitStack() as stack:
        done = worker_map(_render_chunk, columns, options.workers, stack)
        bar = stack.enter_context(tqdm(total=len(items), desc=f"testset {out}", unit="img",
                                       disable=not options.progress))
        for count in done:
            bar.update(count)
    files = []
    for name, text in annotation_files(items).items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
        files.append(out / name)
    manifests = {}
    if options.shards is not None:
        for family, path in zip(REFERENCE_FAMILIES, files):
            manifests[family] = pack(PackOptions(
                root=out, annotations=path, out=Path(options.shards) / family,
                workers=options.workers, seed=options.seed, overwrite=options.overwrite,
                progress=options.progress))
    return ReferenceTestset(tuple(items), tuple(files), manifests)
