"""Which images the stand-in dataset holds: counts per source, paths, labels, sizes and formats.

Format modes. `balanced` draws the format, the JPEG/WebP quality and the image size independently of
the class (sizes pooled over every source of the same content type), so only the traces separate real
from synthetic. `realistic` gives each source its real format and typical size, as in ImagiNet, where
for instance every WebP image is synthetic: the confound `inspect` must flag.
"""

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from imaginet_shards.sample.sources import (
    BALANCED_FORMAT_MIX,
    CONTENT_FLOORS,
    CONTENTS,
    JPEG_QUALITY,
    LSUN_CATEGORIES,
    MIN_COUNT,
    MIN_PER_SOURCE,
    MIN_SIDE,
    PHOTOZILLA_CATEGORIES,
    REFERENCE_SIDE,
    SOURCES,
    SPLITS,
    WEBP_QUALITY,
    WIKIART_STYLES,
    Source,
    source_group,
)


@dataclass(frozen=True)
class SampleOptions:
    """What `write_sample` generates; the same options (seed included) give byte-identical files."""

    count: int = 1000
    seed: int = 0
    max_side: int = 384  # scales every source's typical size by max_side / 1024, capped at max_side
    formats: Literal["balanced", "realistic"] = "balanced"
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, calibration, test
    workers: int = 1


@dataclass(frozen=True)
class SampleItem:
    """One planned image: where it goes, its labels and how it is encoded."""

    index: int
    path: str
    labels: tuple[int, int, int, int]
    split: str
    width: int
    height: int
    format: str
    quality: int  # JPEG/WebP quality; 0 for PNG


def _check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low \
            or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bounds}{why}, got {value!r}")


def validate_options(options: SampleOptions) -> None:
    """Raise ValueError naming the first bad option."""
    _check_int("count", options.count, MIN_COUNT,
               why=f" (every split needs an image of each of the {len(SOURCES)} sources)")
    _check_int("seed", options.seed, 0)
    _check_int("max_side", options.max_side, 64, 4096)
    _check_int("workers", options.workers, 1)
    if options.formats not in ("balanced", "realistic"):
        raise ValueError(f"formats must be 'balanced' or 'realistic', got {options.formats!r}")
    splits = tuple(options.splits)
    if len(splits) != 3 or not all(isinstance(f, (int, float)) and f > 0 for f in splits) \
            or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be 3 positive fractions (train, calibration, test) summing to 1, "
                         f"got {options.splits!r}")


def allocate(total: int, weights: Sequence[float], floor: int = 0) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder), each >= floor."""
    rest = total - floor * len(weights)
    if rest < 0:
        raise ValueError(f"cannot give {len(weights)} parts at least {floor} each out of {total}")
    scale = rest / sum(weights)
    exact = [w * scale for w in weights]
    parts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (parts[i] - exact[i], i))
    for i in by_remainder[:rest - sum(parts)]:
        parts[i] += 1
    return [p + floor for p in parts]


def source_counts(count: int) -> list[int]:
    """Images per source (in SOURCES order): half real, half synthetic, the same content mix in both
    classes, each (class, content) group shared by its sources' weights, at least 3 per source."""
    content_weights = [sum(s.weight for s in SOURCES if s.labels[1] == c) for c in CONTENTS]
    counts = [0] * len(SOURCES)
    for origin, total in ((0, count // 2), (1, count - count // 2)):
        extra = allocate(total - sum(CONTENT_FLOORS), content_weights)
        for content, n in zip(CONTENTS, (f + e for f, e in zip(CONTENT_FLOORS, extra))):
            group = source_group(origin, content)
            weights = [SOURCES[i].weight for i in group]
            for i, k in zip(group, allocate(n, weights, floor=MIN_PER_SOURCE)):
                counts[i] = k
    return counts


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """A typical size scaled by max_side / 1024, capped at max_side, short side at least 32."""
    scale = min(max_side / REFERENCE_SIDE, max_side / max(width, height))
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def _size_pool(source: Source, balanced: bool) -> tuple[tuple[Source, ...], list[float]]:
    """Sources whose typical sizes `source` draws from: itself, or (balanced) its whole content type."""
    if not balanced:
        return (source,), [1.0]
    pool = tuple(s for s in SOURCES if s.labels[1] == source.labels[1])
    return pool, [s.weight for s in pool]


def _formats_for(source: Source, n: int, balanced: bool, rng: np.random.Generator) -> list[str]:
    """Formats of a source's n images: its native one, or (balanced) the shared mix, shuffled."""
    if not balanced:
        return [source.native_format] * n
    counts = allocate(n, list(BALANCED_FORMAT_MIX.values()))
    formats = [f for f, k in zip(BALANCED_FORMAT_MIX, counts) for _ in range(k)]
    return [formats[i] for i in rng.permutation(n)]


def _path_for(source: Source, index: int, fmt: str, rng: np.random.Generator) -> str:
    ext = {"jpeg": source.jpeg_ext, "png": "png", "webp": "webp"}[fmt]
    return source.pattern.format(
        number=index, ext=ext, uid=uuid.UUID(bytes=rng.bytes(16), version=4),
        lsun=LSUN_CATEGORIES[index % len(LSUN_CATEGORIES)], style=WIKIART_STYLES[index % len(WIKIART_STYLES)],
        category=PHOTOZILLA_CATEGORIES[index % len(PHOTOZILLA_CATEGORIES)])


def plan_sample(options: SampleOptions | None = None) -> list[SampleItem]:
    """Every image of the sample, in annotation order; pure and deterministic for the options
    (default `SampleOptions()`)."""
    options = SampleOptions() if options is None else options
    validate_options(options)
    balanced = options.formats == "balanced"
    rng = np.random.default_rng((options.seed, 0))
    per_source = source_counts(options.count)
    items: list[SampleItem] = []
    for source, n in zip(SOURCES, per_source):
        split_counts = allocate(n, list(options.splits), floor=1)
        splits = [sp for sp, k in zip(SPLITS, split_counts) for _ in range(k)]
        formats = _formats_for(source, n, balanced, rng)
        pool, pool_weights = _size_pool(source, balanced)
        pool_p = np.asarray(pool_weights) / sum(pool_weights)
        for split, fmt in zip(splits, formats):
            index = len(items)
            sized = pool[rng.choice(len(pool), p=pool_p)]
            width, height = scaled_size(*sized.sizes[rng.integers(len(sized.sizes))], options.max_side)
            quality = {"jpeg": JPEG_QUALITY, "webp": WEBP_QUALITY}.get(fmt)
            items.append(SampleItem(
                index=index, path=_path_for(source, index, fmt, rng), labels=source.labels,
                split=split, width=width, height=height, format=fmt,
                quality=0 if quality is None else int(rng.integers(quality[0], quality[1] + 1))))
    return items
