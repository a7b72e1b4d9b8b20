"""ImagiNet annotation files: label vocabularies, parsing, validation and tracks (docs/architecture.md, "Annotations").

One sample a line, no header: `relative/path,origin,content,family,generator`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from imaginet_shards.errors import AnnotationError
from imaginet_shards.format.images import SOURCE_SUFFIXES

LABEL_COLUMNS: tuple[str, ...] = ("origin", "content", "family", "generator")

VOCABULARIES: dict[str, tuple[str, ...]] = {
    "origin": ("real", "synthetic"),
    "content": ("photos", "paintings", "faces", "uncategorized"),
    "family": ("GAN", "Stable Diffusion", "Midjourney", "DALL-E 3", "none (real)"),
    "generator": ("ProGAN", "StyleGAN-XL", "StyleGAN3", "SD v2.1", "SDXL v1.0", "Animagine XL",
                  "Midjourney", "DALL-E 3", "none (real)"),
}
REAL_FAMILY = 4
REAL_GENERATOR = 8
# Which family each generator belongs to (the consistency rule between the two columns).
GENERATOR_FAMILY: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 2, 3, 4)

TRACKS: dict[str, str] = {
    "origin": "real vs synthetic, all rows",
    "content": "content type, synthetic rows only",
    "family": "generator family, synthetic rows only",
    "generator": "generator, synthetic rows only",
    "all": "the 4-vector (origin, content, family, generator), all rows",
}



def schema() -> dict:
    """The machine-readable label schema (the content of annotations/labels.json)."""
    return {
        "columns": ["path", *LABEL_COLUMNS],
        "vocabularies": {k: dict(enumerate(v)) for k, v in VOCABULARIES.items()},
        "generator_family": list(GENERATOR_FAMILY),
        "tracks": TRACKS,
        "image_extensions": sorted(SOURCE_SUFFIXES),
    }


def schema_json() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"


def normalize_path(raw: str) -> str:
    """Canonical relative POSIX path of an annotation entry (`./a/b.png` -> `a/b.png`).

    Raises ValueError for empty, absolute or root-escaping paths.
    """
    if not raw:
        raise ValueError("empty path")
    if raw.startswith("/") or raw.startswith("\\") or (len(raw) > 1 and raw[1] == ":"):
        raise ValueError(f"absolute path {raw!r}")
    parts: list[str] = []
    for part in PurePosixPath(raw.replace("\\", "/")).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError(f"path {raw!r} escapes the dataset root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise ValueError(f"path {raw!r} names the dataset root itself")
    return "/".join(parts)


def _check_labels(labels: list[int]) -> str | None:
    origin, content, family, generator = labels
    for name, value in zip(LABEL_COLUMNS, labels):
        if not 0 <= value < len(VOCABULARIES[name]):
            return f"{name} {value} out of range 0..{len(VOCABULARIES[name]) - 1}"
    if origin == 0 and (family != REAL_FAMILY or generator != REAL_GENERATOR):
        return f"real row (origin 0) with family {family} / generator {generator} (expected 4 / 8)"
    if origin == 1 and (family == REAL_FAMILY or generator == REAL_GENERATOR):
        return f"synthetic row (origin 1) with family {family} / generator {generator} of a real image"
    if GENERATOR_FAMILY[generator] != family:
        return f"generator {generator} belongs to family {GENERATOR_FAMILY[generator]}, not {family}"
    return None


def parse_lines(lines: Iterable[str], source: str = "<annotations>",
                collect: bool = False) -> pd.DataFrame:
    """Parse annotation lines into a DataFrame (path, origin, content, family, generator, line).

    Raises AnnotationError naming the first bad line, or every bad line when `collect` is true.
    Blank lines are ignored. A repeated path with the same labels (the official per-family files
    have a few) is dropped and listed in `frame.attrs["duplicates"]` as (line, path, first line);
    a repeated path with different labels is an error.
    """
    paths: list[str] = []
    rows: list[list[int]] = []
    line_numbers: list[int] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, tuple[int, list[int]]] = {}
    duplicates: list[tuple[int, str, int]] = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        problem = None
        fields = line.split(",")
        if len(fields) != 5:
            problem = f"expected 5 comma-separated columns, got {len(fields)}"
        else:
            try:
                path = normalize_path(fields[0].strip())
                labels = [int(f.strip()) for f in fields[1:]]
            except ValueError as exc:
                problem = (f"non-integer label in {fields[1:]}"
                           if "invalid literal" in str(exc) else str(exc))
            else:
                problem = _check_labels(labels)
                if problem is None and path in seen:
                    first_line, first_labels = seen[path]
                    if first_labels == labels:
                        duplicates.append((number, path, first_line))
                        continue
                    problem = (f"duplicate path {path!r} with labels {labels}, line {first_line} "
                               f"has {first_labels}")
        if problem is not None:
            problems.append((number, problem))
            if not collect:
                break
            continue
        seen[path] = (number, labels)
        paths.append(path)
        rows.append(labels)
        line_numbers.append(number)
    if problems:
        raise AnnotationError(source, problems)
    labels_array = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    frame = pd.DataFrame({"path": paths})
    for i, name in enumerate(LABEL_COLUMNS):
        frame[name] = labels_array[:, i]
    frame["line"] = np.asarray(line_numbers, dtype=np.int64)
    frame.attrs["duplicates"] = duplicates
    return frame


def read_annotations(path: str | Path, collect: bool = False) -> pd.DataFrame:
    """Parse and validate one annotation file (see parse_lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(str(path), [(0, f"cannot read: {exc}")]) from exc
    return parse_lines(text.splitlines(), source=str(path), collect=collect)


def select_track(frame: pd.DataFrame, track: str) -> pd.DataFrame:
    """Rows and a `target` column for one track (docs/architecture.md, "Annotations"); `all` keeps the 4 label columns."""
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; choose one of {sorted(TRACKS)}")
    if track == "all":
        return frame.copy()
    rows = frame if track == "origin" else frame[frame["origin"] == 1]
    return rows.assign(target=rows[track].to_numpy())


def format_line(path: str, labels: Iterable[int]) -> str:
    """One annotation line in the official form (`./path,o,c,f,g`)."""
    return ",".join([f"./{path}", *(str(int(v)) for v in labels)])


def resolve_inside(root: Path, relative: str) -> Path:
    """The file a normalized annotation path names, refusing symlinks that leave the root."""
    root = root.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{relative!r} resolves to {target}, outside the dataset root {root}")
    return target


@dataclass(frozen=True)
class AnnotationFile:
    """Identity of an annotation file as recorded in a manifest."""

    name: str
    sha256: str
    rows: int
