"""Annotation files: label vocabularies, parsing, validation and tracks (docs/architecture.md,
"Annotations").

ImagiNet's format is one sample a line, no header: `relative/path,origin,content,family,generator`.
Zero-shot test sets come in other formats (`path label`, `path,label`, `path,label,generator`);
they give the origin (and a generator id of their own), and every other label is UNKNOWN.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from imaginet_shards.errors import AnnotationError
from imaginet_shards.format.images import SOURCE_SUFFIXES

if TYPE_CHECKING:
    import pandas as pd

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

# A label the annotation file does not give (zero-shot formats: content, family, and the generator
# unless given). Stored as is in `.labels`/`.json`; metrics and counts leave such rows out.
UNKNOWN = -1

ANNOTATION_FORMATS: dict[str, str] = {
    "imaginet": "path,origin,content,family,generator",
    "path,label,generator": "path,origin,generator (the generator is the dataset's own integer id)",
    "path,label": "path,origin",
    "path-label": "path origin (whitespace-separated)",
}
_COLUMN_COUNTS = {"imaginet": 5, "path,label,generator": 3, "path,label": 2, "path-label": 2}


def schema() -> dict:
    """The machine-readable label schema (the content of annotations/labels.json)."""
    return {
        "columns": ["path", *LABEL_COLUMNS],
        "vocabularies": {k: dict(enumerate(v)) for k, v in VOCABULARIES.items()},
        "generator_family": list(GENERATOR_FAMILY),
        "tracks": TRACKS,
        "unknown": UNKNOWN,
        "annotation_formats": ANNOTATION_FORMATS,
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


def _split(line: str, annotation_format: str) -> list[str]:
    if annotation_format == "path-label":
        return line.split()
    return line.split(",")


def _parse_line(line: str, annotation_format: str) -> tuple[str, list[int]]:
    """(normalized path, 4 labels) of one non-blank line; ValueError says what is wrong."""
    fields = _split(line, annotation_format)
    expected = _COLUMN_COUNTS[annotation_format]
    if len(fields) != expected:
        separated = "whitespace" if annotation_format == "path-label" else "comma"
        raise ValueError(f"expected {expected} {separated}-separated columns, got {len(fields)} "
                         f"({annotation_format}: {ANNOTATION_FORMATS[annotation_format]})")
    path = normalize_path(fields[0].strip())
    try:
        values = [int(f.strip()) for f in fields[1:]]
    except ValueError:
        raise ValueError(f"non-integer label in {fields[1:]}") from None
    if annotation_format == "imaginet":
        problem = _check_labels(values)
        if problem is not None:
            raise ValueError(problem)
        return path, values
    origin, *given = values
    if origin not in (0, 1):
        raise ValueError(f"label {origin} is neither 0 (real) nor 1 (synthetic)")
    if given and given[0] < 0:
        raise ValueError(f"generator {given[0]} is negative")
    return path, [origin, UNKNOWN, UNKNOWN, given[0] if given else UNKNOWN]


def detect_format(line: str) -> str | None:
    """The first annotation format (ANNOTATION_FORMATS order) that parses `line`, if any; only for
    suggestions in error messages, never to choose a format."""
    for candidate in ANNOTATION_FORMATS:
        try:
            _parse_line(line, candidate)
        except ValueError:
            continue
        return candidate
    return None


def parse_lines(lines: Iterable[str], source: str = "<annotations>", collect: bool = False,
                annotation_format: str = "imaginet", keep_duplicates: bool = False) -> pd.DataFrame:
    """Parse annotation lines into a DataFrame (path, origin, content, family, generator, line).

    `annotation_format` is one of ANNOTATION_FORMATS; labels a format does not give are UNKNOWN.
    Raises AnnotationError naming the first bad line, or every bad line when `collect` is true; a
    line of another format is reported with that format as a suggestion. Blank lines are ignored.
    A repeated path with the same labels (the official per-family files have a few) is listed in
    `frame.attrs["duplicates"]` as (line, path, first line) and dropped, unless `keep_duplicates`
    (every line is then a row, as the reference's test-set builder reads them); a repeated path
    with different labels is an error.
    """
    if annotation_format not in ANNOTATION_FORMATS:
        raise ValueError(f"unknown annotation format {annotation_format!r}; choose one of "
                         f"{list(ANNOTATION_FORMATS)}")
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
        try:
            path, labels = _parse_line(line, annotation_format)
        except ValueError as exc:
            problem = str(exc)
            suggestion = detect_format(line)
            if suggestion is not None and suggestion != annotation_format:
                problem += f"; the line reads as --annotation-format {suggestion}"
        else:
            if path in seen:
                first_line, first_labels = seen[path]
                if first_labels != labels:
                    problem = (f"duplicate path {path!r} with labels {labels}, line {first_line} "
                               f"has {first_labels}")
                else:
                    duplicates.append((number, path, first_line))
                    if not keep_duplicates:
                        continue
        if problem is not None:
            problems.append((number, problem))
            if not collect:
                break
            continue
        seen.setdefault(path, (number, labels))
        paths.append(path)
        rows.append(labels)
        line_numbers.append(number)
    if problems:
        raise AnnotationError(source, problems)
    import numpy as np  # here: the vocabularies and the label checks serve commands that never parse
    import pandas as pd  # a file (inspect, --help), and pandas alone takes most of a second to import

    labels_array = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    frame = pd.DataFrame({"path": paths})
    for i, name in enumerate(LABEL_COLUMNS):
        frame[name] = labels_array[:, i]
    frame["line"] = np.asarray(line_numbers, dtype=np.int64)
    frame.attrs["duplicates"] = duplicates
    frame.attrs["format"] = annotation_format
    return frame


def read_annotations(path: str | Path, collect: bool = False, annotation_format: str = "imaginet",
                     keep_duplicates: bool = False) -> pd.DataFrame:
    """Parse and validate one annotation file (see parse_lines)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(str(path), [(0, f"cannot read: {exc}")]) from exc
    return parse_lines(text.splitlines(), source=str(path), collect=collect,
                       annotation_format=annotation_format, keep_duplicates=keep_duplicates)


def recorded_format(annotations: Mapping[str, Any]) -> str:
    """The annotation format a manifest's `annotations` record names (`imaginet` when it names none,
    as shard sets packed before the other formats existed)."""
    annotation_format = str(annotations.get("format", "imaginet"))
    if annotation_format not in ANNOTATION_FORMATS:
        raise ValueError(f"manifest names an unknown annotation format {annotation_format!r}")
    return annotation_format


def label_name(column: str, value: int, annotation_format: str = "imaginet") -> str:
    """Display name of one label value: `unknown` for UNKNOWN; a generator of a file in another
    format than ImagiNet's is that dataset's own id (`generator 3`), not ImagiNet's vocabulary."""
    value = int(value)
    if value == UNKNOWN:
        return "unknown"
    if column == "generator" and annotation_format != "imaginet":
        return f"generator {value}"
    names = VOCABULARIES[column]
    if not 0 <= value < len(names):
        raise ValueError(f"{column} {value} is not a label value (0..{len(names) - 1}, or "
                         f"{UNKNOWN} for unknown)")
    return names[value]


def select_track(frame: pd.DataFrame, track: str) -> pd.DataFrame:
    """Rows and a `target` column for one track (docs/architecture.md, "Annotations"); `all` keeps
    the 4 label columns. Rows whose label for the track is UNKNOWN are left out."""
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}; choose one of {sorted(TRACKS)}")
    if track == "all":
        return frame.copy()
    rows = frame if track == "origin" else frame[frame["origin"] == 1]
    rows = rows[rows[track] != UNKNOWN]
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
