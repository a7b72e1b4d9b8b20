"""The embedded stand-in ImagiNet dataset (issue 2, item 3): `write_sample(OUT)`.

ImagiNet itself is ~200,000 images; tests and the demo need a small tree that looks like it: the same
source folders and file names, each source's typical size, aspect and format, the official annotation
format, and a difference between real and synthetic images that a small CNN learns in minutes but that
no trivial statistic (format, size, mean colour, file size) gives away. Every image is rendered from its
own RNG seeded by (seed, index): a seed fixes every byte, whatever the number of worker processes.

Content. One distribution per content type, the same for real and synthetic rows: photos are random
crops of the two photographs scikit-learn ships, colour-jittered and mixed with 1/f texture; faces are
procedural portraits; paintings are brush strokes or flat anime-like colour; uncategorized is a mix.
Every image then gets a camera-like optical blur (the scene carries little energy at the finest scale)
and sensor-like grain, both drawn independently of the class.

Generator traces. A synthetic image also carries its generator's trace: a faint periodic pattern whose
spectral peaks sit at generator-specific frequencies, with a geometry shared by the family
(`TRACES`). The peak sets are symmetric under 90° rotations and flips, and the dominant component is
fine-grained (period 2 to 4 pixels) so that it survives the `train` perturbations of DESIGN §6 except
the strongest blur and compression. To keep file sizes balanced, the trace takes the place of part
of the grain.

Format modes. `balanced` draws the format, the JPEG/WebP quality and the image size independently of the
class (sizes pooled over every source of the same content type), so only the traces separate real from
synthetic. `realistic` gives each source its real format and typical size, as in ImagiNet, where for
instance every WebP image is synthetic: the confound `inspect` must flag.
"""
from __future__ import annotations

import io
import math
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Callable, Literal, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from .annotations import REAL_GENERATOR, VOCABULARIES, format_line

SPLITS: tuple[str, ...] = ("train", "calibration", "test")
FORMATS: tuple[str, ...] = ("jpeg", "png", "webp")
# Balanced mode: roughly ImagiNet's overall mix (about 40 % JPEG, 40 % PNG, 20 % WebP), for both classes.
BALANCED_FORMAT_MIX: dict[str, float] = {"jpeg": 0.4, "png": 0.4, "webp": 0.2}
JPEG_QUALITY: tuple[int, int] = (85, 97)
WEBP_QUALITY: tuple[int, int] = (85, 97)
PNG_LEVEL = 3  # zlib level: 3x faster than the default 6 on grainy images, ~10 % larger files
REFERENCE_SIDE = 1024  # max_side at which sources keep their typical sizes
MIN_SIDE = 32
MIN_PER_SOURCE = len(SPLITS)  # every split holds every source, hence every generator
# RMS on the 0-255 scale of the camera-like grain (both classes) and of a generator trace.
GRAIN_RMS: tuple[float, float] = (2.0, 6.0)
TRACE_RMS: tuple[float, float] = (5.0, 8.0)
CONTENT_BLUR: tuple[float, float] = (0.6, 1.0)  # sigma in pixels, both classes
ENERGY_MATCH = 0.7  # share of the trace energy a synthetic image takes out of its grain


@dataclass(frozen=True)
class Source:
    """One ImagiNet source: labels, weight (rows in the official test split), sizes, format, paths."""

    name: str
    labels: tuple[int, int, int, int]  # origin, content, family, generator
    weight: int
    sizes: tuple[tuple[int, int], ...]  # typical (width, height), drawn uniformly
    native_format: str  # the format of the real source, used by the `realistic` mode
    pattern: str  # relative path; fields: number, uid, lsun, style, category, ext
    jpeg_ext: str = "jpg"


_LSUN = ("airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
         "train", "tvmonitor")
_WIKIART_STYLES = ("Impressionism", "Post_Impressionism", "Realism", "Romanticism", "Baroque",
                   "Expressionism", "Cubism", "Ukiyo_e")
_PHOTOZILLA = ("nature", "architecture", "food", "street", "portrait", "animals", "sports", "night")
_PHOTO_4x3 = ((500, 375), (500, 333), (375, 500), (333, 500))
_COCO = ((640, 480), (640, 427), (480, 640), (427, 640))
_SQUARE = {side: ((side, side),) for side in (256, 512, 768, 1024)}

# Names, labels, sizes and formats follow the official annotation files (DESIGN §3); weights are each
# source's rows in the official test split, so that every content type is half real, half synthetic.
SOURCES: tuple[Source, ...] = (
    Source("imagenet", (0, 0, 4, 8), 1500, _PHOTO_4x3, "jpeg",
           "imagenet/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_{number:08d}.{ext}", jpeg_ext="JPEG"),
    Source("val2017", (0, 0, 4, 8), 3000, _COCO, "jpeg", "val2017/{number:012d}.{ext}"),
    Source("progan_val_real", (0, 0, 4, 8), 1500, _SQUARE[256], "png",
           "progan_val/{lsun}/0_real/{number}.{ext}"),
    Source("ffhq", (0, 2, 4, 8), 4500, _SQUARE[1024], "png", "ffhq/{uid}.{ext}"),
    Source("wikiart", (0, 1, 4, 8), 2250, ((1024, 768), (768, 1024), (1024, 820), (820, 1024)),
           "jpeg", "wikiart/{style}/sample_painting-{number}.{ext}"),
    Source("danbooru2021", (0, 1, 4, 8), 2250, _SQUARE[512], "jpeg", "danbooru2021/{number}.{ext}"),
    Source("photozilla", (0, 3, 4, 8), 5000, ((1024, 683), (683, 1024), (1024, 768), (800, 600)),
           "jpeg", "photozilla/dataset/{category}/{number}.{ext}"),
    Source("progan_val_fake", (1, 0, 0, 0), 1500, _SQUARE[256], "png",
           "progan_val/{lsun}/1_fake/{number}.{ext}"),
    Source("imagenet_stylegan", (1, 0, 0, 1), 1500, _SQUARE[256], "png",
           "imagenet_stylegan/{uid}.{ext}"),
    Source("ffhq_stylegan", (1, 2, 0, 1), 2250, _SQUARE[1024], "png", "ffhq_stylegan/{uid}.{ext}"),
    Source("wikiart_stylegan", (1, 1, 0, 2), 2250, _SQUARE[1024], "png",
           "wikiart_stylegan/seed{number}.{ext}"),
    Source("sd_photos_fake", (1, 0, 1, 3), 1521, _SQUARE[768], "webp", "sd_photos_fake/{uid}.{ext}"),
    Source("sd_faces_fake", (1, 2, 1, 3), 1128, _SQUARE[768], "webp", "sd_faces_fake/{uid}.{ext}"),
    Source("sd_paintings_fake", (1, 1, 1, 3), 548, _SQUARE[768], "webp",
           "sd_paintings_fake/{uid}.{ext}"),
    Source("sdxl_photos_fake", (1, 0, 1, 4), 1479, _SQUARE[1024], "webp",
           "sdxl_photos_fake/{uid}.{ext}"),
    Source("sdxl_faces_fake", (1, 2, 1, 4), 1122, _SQUARE[1024], "webp", "sdxl_faces_fake/{uid}.{ext}"),
    Source("sdxl_paintings_fake", (1, 1, 1, 4), 577, _SQUARE[1024], "webp",
           "sdxl_paintings_fake/{uid}.{ext}"),
    Source("animaginexl_paintings_fake", (1, 1, 1, 5), 1125,
           ((832, 1216), (1216, 832), (1024, 1024), (896, 1152)), "webp",
           "animaginexl_paintings_fake/{uid}.{ext}"),
    Source("journeydb", (1, 3, 2, 6), 2500,
           ((1024, 1024), (1456, 816), (816, 1456), (1232, 928), (928, 1232)), "jpeg",
           "journeydb/{uid}.{ext}"),
    Source("dalle3", (1, 3, 3, 7), 2500, ((1024, 1024), (1792, 1024), (1024, 1792)), "png",
           "dalle3/{uid}.{ext}"),
)


def _group(origin: int, content: int) -> list[int]:
    """Indexes of the sources of one class and content type."""
    return [i for i, s in enumerate(SOURCES) if s.labels[:2] == (origin, content)]


CONTENTS = range(len(VOCABULARIES["content"]))
# Images each content type needs in each class: 3 (one per split) for each of its sources.
CONTENT_FLOORS = [MIN_PER_SOURCE * max(len(_group(o, c)) for o in (0, 1)) for c in CONTENTS]
MIN_COUNT = 2 * sum(CONTENT_FLOORS)


# Peak geometries as multiples (a, b) of the base frequency 1/period; each pair also stands for its
# mirror (b, a), so every pattern is invariant under 90° rotations and flips up to a shift.
GEOMETRIES: dict[str, tuple[tuple[int, int], ...]] = {
    "diag": ((1, 1),),            # checkerboard
    "axis": ((1, 0),),            # grid lines
    "knight": ((2, 1),),
    "dots": ((1, 0), (1, 1)),     # one bright pixel per cell (period 2: nearest-neighbour upsampling)
}


@dataclass(frozen=True)
class TraceComponent:
    """A periodic pattern with D4-symmetric spectral peaks, added with channel weights `rgb`.

    `kind` sets the peak geometry at frequency f = 1/`period` (see GEOMETRIES): `diag` peaks at
    (±f, ±f) (at period 2, the checkerboard of transposed-convolution upsampling), `axis` at (±f, 0)
    and (0, ±f) (grid lines), `knight` at (±2f, ±f) and (±f, ±2f), `dots` at both `axis` and `diag`
    peaks (at period 2, one bright pixel per 2×2 cell). `weight` is the component's share of the
    trace amplitude.
    """

    kind: Literal["diag", "axis", "knight", "dots"]
    period: float
    weight: float = 1.0
    rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in GEOMETRIES:
            raise ValueError(f"unknown trace kind {self.kind!r}; choose one of {sorted(GEOMETRIES)}")
        highest = max(max(pair) for pair in GEOMETRIES[self.kind])
        if self.period < 2 * highest:
            raise ValueError(f"a {self.kind!r} trace needs period >= {2 * highest} (its peaks at "
                             f"{highest}/period must stay below the Nyquist limit), got {self.period}")


_CHROMA = (1.0, -0.25, -1.0)
# The family fixes the dominant, fine-grained pattern (GAN: checkerboard; SD: grid lines; Midjourney:
# dots; DALL-E 3: period-4 knight peaks), which a small CNN picks up within a few hundred steps and
# which JPEG/WebP at the qualities used here keep; a weaker mid-frequency component, different for
# every generator, makes each generator's trace its own.
TRACES: dict[int, tuple[TraceComponent, ...]] = {
    0: (TraceComponent("diag", 2), TraceComponent("diag", 6, 0.25)),      # ProGAN
    1: (TraceComponent("diag", 2), TraceComponent("diag", 10, 0.25)),     # StyleGAN-XL
    2: (TraceComponent("diag", 2), TraceComponent("diag", 5, 0.25)),      # StyleGAN3
    3: (TraceComponent("axis", 2), TraceComponent("axis", 6, 0.25)),      # SD v2.1
    4: (TraceComponent("axis", 2), TraceComponent("axis", 10, 0.25)),     # SDXL v1.0
    5: (TraceComponent("axis", 2), TraceComponent("axis", 5, 0.25)),      # Animagine XL
    6: (TraceComponent("dots", 2), TraceComponent("knight", 12, 0.25)),   # Midjourney
    7: (TraceComponent("knight", 4), TraceComponent("axis", 6, 0.25, rgb=_CHROMA)),  # DALL-E 3
}


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


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample` wrote: counts per split, content, generator and format; bytes; time."""

    out: Path
    formats: str
    max_side: int
    by_split: Mapping[str, int]
    by_content: Mapping[str, int]
    by_generator: Mapping[str, int]
    by_format: Mapping[str, tuple[int, int]]  # format -> (real, synthetic)
    total_bytes: int
    seconds: float

    @property
    def count(self) -> int:
        """Images written."""
        return sum(self.by_split.values())

    def __str__(self) -> str:
        real = sum(r for r, _ in self.by_format.values())
        rate = self.count / self.seconds if self.seconds > 0 else float("inf")
        join = " · ".join
        return "\n".join([
            f"sample: {self.count} images ({real} real, {self.count - real} synthetic), "
            f"{self.total_bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({rate:.0f} images/s) "
            f"-> {self.out}",
            f"  mode: {self.formats}, max side {self.max_side}",
            "  splits: " + join(f"{k} {v} ({k}.txt)" for k, v in self.by_split.items()),
            "  content: " + join(f"{k} {v}" for k, v in self.by_content.items()),
            "  formats (real/synthetic): "
            + join(f"{k} {r}/{s}" for k, (r, s) in self.by_format.items()),
            "  generators: " + join(f"{k} {v}" for k, v in self.by_generator.items()),
        ])


# --------------------------------------------------------------------------------------------- plan

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


def allocate(total: int, weights: list[float], floor: int = 0) -> list[int]:
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
            group = _group(origin, content)
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
        lsun=_LSUN[index % len(_LSUN)], style=_WIKIART_STYLES[index % len(_WIKIART_STYLES)],
        category=_PHOTOZILLA[index % len(_PHOTOZILLA)])


def plan_sample(options: SampleOptions = SampleOptions()) -> list[SampleItem]:
    """Every image of the sample, in annotation order; pure and deterministic for the options."""
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


# ------------------------------------------------------------------------------------------ content

@lru_cache(maxsize=1)
def _photographs() -> tuple[np.ndarray, ...]:
    """The two photographs scikit-learn ships (china.jpg, flower.jpg), found without importing it."""
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-learn is needed for the sample photographs: pip install scikit-learn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return tuple(np.asarray(Image.open(folder / name).convert("RGB"))
                 for name in ("china.jpg", "flower.jpg"))


def pink_noise(rng: np.random.Generator, width: int, height: int, beta: float = 2.0,
               base: int = 128) -> np.ndarray:
    """Zero-mean, unit-std noise with a 1/f^beta power spectrum (natural-image statistics), made at
    most `base` pixels wide and resized up, float32 (height, width)."""
    scale = min(1.0, base / max(width, height))
    lw, lh = max(8, round(width * scale)), max(8, round(height * scale))
    fy = np.fft.fftfreq(lh)[:, None]
    fx = np.fft.rfftfreq(lw)[None, :]
    freq = np.hypot(fx, fy)
    freq[0, 0] = np.inf
    white = rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)
    spectrum = white * freq ** (-beta / 2)
    field = np.fft.irfft2(spectrum, s=(lh, lw)).astype(np.float32)
    field = (field - field.mean()) / (field.std() + 1e-8)
    if (lw, lh) != (width, height):
        field = np.asarray(Image.fromarray(field).resize((width, height), Image.BICUBIC))
    return field


def colour_field(rng: np.random.Generator, width: int, height: int, beta: float = 2.0,
                 contrast: float = 45.0) -> np.ndarray:
    """A smooth random colour image (1/f texture through a random colour mix), float32 HxWx3."""
    fields = np.stack([pink_noise(rng, width, height, beta, base=96) for _ in range(3)], axis=-1)
    mix = rng.normal(0.0, 1.0, (3, 3)) * 0.4 + np.eye(3) * 0.3 + 0.5  # mostly luminance
    mean = rng.uniform(60, 190, 3).astype(np.float32)
    return mean + fields @ (contrast / np.sqrt(3) * mix.T).astype(np.float32)


def _jitter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and white-balance jitter of a float HxWx3 image."""
    gray = img.mean(axis=-1, keepdims=True)
    img = gray + rng.uniform(0.6, 1.3) * (img - gray)
    img = img * rng.uniform(0.85, 1.15, 3)
    mean = img.mean()
    return (mean + rng.uniform(0.75, 1.25) * (img - mean)) * rng.uniform(0.8, 1.2)


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random crop of a scikit-learn photograph, resized, flipped, jittered, mixed with texture."""
    base = _photographs()[rng.integers(2)]
    bh, bw = base.shape[:2]
    aspect = width / height
    ch = rng.uniform(0.35, 1.0) * bh
    cw = ch * aspect
    if cw > bw:
        cw, ch = bw, bw / aspect
    x0, y0 = rng.uniform(0, bw - cw), rng.uniform(0, bh - ch)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    arr = np.asarray(img, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    mix = rng.uniform(0.0, 0.35)
    return (1 - mix) * _jitter(rng, arr) + mix * colour_field(rng, width, height, rng.uniform(1.6, 2.4))


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random saturated-ish colours (uint8 n x 3)."""
    return rng.integers(20, 236, (n, 3))


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(colour, 0, 255))  # type: ignore[return-value]


def face(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A centred, FFHQ-like procedural portrait on a textured background."""
    background = colour_field(rng, width, height, 2.4, contrast=35)
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = min(width, height)
    cx, cy = width / 2 + rng.normal(0, 0.03) * s, height * 0.5 + rng.normal(0, 0.03) * s
    fw, fh = s * rng.uniform(0.17, 0.23), s * rng.uniform(0.23, 0.29)
    skin = np.array([rng.uniform(90, 240), 0, 0])
    skin[1], skin[2] = skin[0] * rng.uniform(0.68, 0.8), skin[0] * rng.uniform(0.5, 0.68)
    hair = rng.integers(10, 200) * np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.7)])
    cloth = _palette(rng, 1)[0]
    draw.ellipse((cx - 2.2 * fw, cy + 1.5 * fh, cx + 2.2 * fw, cy + 4 * fh), fill=_rgb(cloth))
    draw.rectangle((cx - 0.45 * fw, cy + 0.6 * fh, cx + 0.45 * fw, cy + 1.8 * fh), fill=_rgb(skin * 0.9))
    draw.ellipse((cx - 1.2 * fw, cy - 1.35 * fh, cx + 1.2 * fw, cy + rng.uniform(0.2, 1.0) * fh),
                 fill=_rgb(hair))
    for side in (-1, 1):
        draw.ellipse((cx + side * fw - 0.18 * fw, cy - 0.15 * fh, cx + side * fw + 0.18 * fw,
                      cy + 0.2 * fh), fill=_rgb(skin * 0.95))
    draw.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=_rgb(skin))
    draw.chord((cx - 1.05 * fw, cy - 1.15 * fh, cx + 1.05 * fw, cy - 0.2 * fh), 180, 360,
               fill=_rgb(hair))
    iris = _palette(rng, 1)[0] * 0.6
    ey, ex, er = cy - 0.1 * fh, 0.42 * fw, 0.2 * fw
    for side in (-1, 1):
        x = cx + side * ex
        draw.ellipse((x - er, ey - 0.55 * er, x + er, ey + 0.55 * er), fill=(235, 232, 225))
        draw.ellipse((x - 0.5 * er, ey - 0.5 * er, x + 0.5 * er, ey + 0.5 * er), fill=_rgb(iris))
        draw.ellipse((x - 0.2 * er, ey - 0.2 * er, x + 0.2 * er, ey + 0.2 * er), fill=(15, 12, 10))
        draw.line((x - er, ey - 1.3 * er, x + er, ey - 1.5 * er), fill=_rgb(hair * 0.7),
                  width=max(1, round(0.18 * er)))
    draw.line((cx, ey + 0.5 * er, cx - 0.12 * fw, cy + 0.35 * fh), fill=_rgb(skin * 0.75),
              width=max(1, round(0.06 * fw)))
    mouth = rng.uniform(0.25, 0.4) * fw
    draw.chord((cx - mouth, cy + 0.42 * fh, cx + mouth, cy + 0.62 * fh), 0, 180,
               fill=_rgb(skin * np.array([0.95, 0.55, 0.55])))
    img = img.filter(ImageFilter.GaussianBlur(max(0.6, s / 300)))
    shading = 1 + 0.12 * pink_noise(rng, width, height, 2.5, base=64)[..., None]
    return np.asarray(img, dtype=np.float32) * shading


def brush_painting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Visible brush strokes along a smooth flow field, coloured from a posterized colour field."""
    field_ = np.clip(colour_field(rng, width, height, 2.6, contrast=70), 0, 255)
    step = rng.uniform(24, 48)
    palette = np.round(field_ / step) * step  # few tones, as a painter mixes them
    img = Image.fromarray(np.clip(palette, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    flow = pink_noise(rng, width, height, 3.0, base=32) * rng.uniform(1.0, 2.5) + rng.uniform(0, np.pi)
    s = min(width, height)
    n = int(1.2 * width * height / (0.075 * 0.016 * s * s))  # covers the canvas about once
    xs, ys = rng.integers(0, width, n), rng.integers(0, height, n)
    lengths = rng.uniform(0.03, 0.12, n) * s
    widths = np.maximum(1, rng.uniform(0.008, 0.024, n) * s).astype(int)
    jitter = rng.normal(0, 18, (n, 3))
    for x, y, length, w, j in zip(xs, ys, lengths, widths, jitter):
        angle = flow[y, x]
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        draw.line((x - dx, y - dy, x + dx, y + dy), fill=_rgb(palette[y, x] + j), width=int(w))
    canvas = 1 + 0.04 * pink_noise(rng, width, height, 1.0, base=256)[..., None]
    return np.asarray(img, dtype=np.float32) * canvas


def flat_illustration(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Anime-like flat colour: a gradient background and outlined flat shapes with highlights."""
    top, bottom = _palette(rng, 2)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp
    img = Image.fromarray(np.broadcast_to(background, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = min(width, height)
    outline = max(1, round(s * 0.006))
    colours = _palette(rng, 12)
    for colour in colours[: rng.integers(6, 13)]:
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.06, 0.3) * s
        if rng.random() < 0.5:
            box = (cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5))
            draw.ellipse(box, fill=_rgb(colour), outline=(25, 20, 30), width=outline)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
            points = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
            draw.polygon(points, fill=_rgb(colour), outline=(25, 20, 30), width=outline)
        draw.ellipse((cx - 0.25 * r, cy - 0.6 * r, cx - 0.05 * r, cy - 0.4 * r),
                     fill=_rgb(colour * 0.4 + 150))
    return np.asarray(img, dtype=np.float32)


def abstract_art(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Saturated 1/f colour fields with soft glowing discs (the 'uncategorized' art of prompts)."""
    base = colour_field(rng, width, height, rng.uniform(1.8, 2.8), contrast=70)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * max(width, height)
        glow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        base = base * (1 - glow) + glow * _palette(rng, 1)[0]
    return base


ContentFn = Callable[[np.random.Generator, int, int], np.ndarray]
# One distribution per content type, shared by real and synthetic rows: (weight, renderer) mixtures.
CONTENT: dict[int, tuple[tuple[float, ContentFn], ...]] = {
    0: ((1.0, photo),),
    1: ((0.6, brush_painting), (0.4, flat_illustration)),
    2: ((1.0, face),),
    3: ((0.4, photo), (0.3, flat_illustration), (0.3, abstract_art)),
}


def render_content(rng: np.random.Generator, content: int, width: int, height: int) -> np.ndarray:
    """Draw an image of one content type from its (class-independent) distribution, float HxWx3."""
    weights, renderers = zip(*CONTENT[content])
    renderer = renderers[rng.choice(len(renderers), p=np.asarray(weights) / sum(weights))]
    return renderer(rng, width, height)


def optical_blur(rng: np.random.Generator, content: np.ndarray) -> np.ndarray:
    """A camera-like low-pass (Gaussian, sigma CONTENT_BLUR): like a real photograph's content, and
    unlike its sensor noise, the scene carries little energy at the highest frequencies."""
    image = Image.fromarray(np.clip(np.rint(content), 0, 255).astype(np.uint8))
    blurred = image.filter(ImageFilter.GaussianBlur(rng.uniform(*CONTENT_BLUR)))
    return np.asarray(blurred, dtype=np.float32)


# ------------------------------------------------------------------------------------------- traces

def _pattern(component: TraceComponent, width: int, height: int, phase: np.ndarray) -> np.ndarray:
    """One trace component, unit RMS, float32 (height, width); `phase` shifts it by whole pixels."""
    phase = phase % (2 * math.ceil(component.period))  # keep float32 arguments small
    omega = 2 * np.pi / component.period
    x = (np.arange(width, dtype=np.float32) + phase[0]) * omega
    y = (np.arange(height, dtype=np.float32) + phase[1]) * omega

    def rms(k: int) -> float:  # of cos(k * omega * n) over whole pixels n
        return 1.0 if k == 0 or 2 * k == component.period else math.sqrt(0.5)

    pattern = np.zeros((height, width), dtype=np.float32)
    energy = 0.0
    for a, b in GEOMETRIES[component.kind]:
        for fx, fy in {(a, b), (b, a)}:
            pattern += np.outer(np.cos(fy * y), np.cos(fx * x))
            energy += (rms(fx) * rms(fy)) ** 2
    return pattern / math.sqrt(energy)


def generator_trace(rng: np.random.Generator, generator: int, width: int, height: int) -> np.ndarray:
    """A generator's trace at a random phase, unit RMS over its components, float32 HxWx3."""
    trace = np.zeros((height, width, 3), dtype=np.float32)
    norm = 0.0
    for component in TRACES[generator]:
        rgb = np.asarray(component.rgb, dtype=np.float32)
        rgb = rgb / np.sqrt((rgb ** 2).mean())
        phase = rng.integers(0, 1 << 16, 2)  # whole pixels: sub-pixel shifts fade period-2 patterns
        trace += component.weight * _pattern(component, width, height, phase)[..., None] * rgb
        norm += component.weight ** 2  # components are (nearly) orthogonal
    return trace / np.sqrt(norm)


def finish(rng: np.random.Generator, content: np.ndarray, generator: int) -> np.ndarray:
    """Add camera-like grain, its RMS drawn independently of the class, and to a synthetic image its
    generator's trace, which takes ENERGY_MATCH of its energy out of the grain (so that file sizes
    stay balanced). Round to uint8."""
    height, width = content.shape[:2]
    grain_rms = rng.uniform(*GRAIN_RMS)
    trace_rms = rng.uniform(*TRACE_RMS) if generator != REAL_GENERATOR else 0.0
    grain_rms = math.sqrt(max(grain_rms ** 2 - ENERGY_MATCH * trace_rms ** 2, (0.3 * grain_rms) ** 2))
    luma = rng.standard_normal((height, width, 1), dtype=np.float32)
    chroma = rng.standard_normal((height, width, 3), dtype=np.float32)
    img = content + grain_rms * (0.8 * luma + 0.6 * chroma)
    if trace_rms:
        img += trace_rms * generator_trace(rng, generator, width, height)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------- encoding

def encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode uint8 HxWx3 pixels as JPEG, PNG or WebP (PIL's encoders are deterministic)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "jpeg":
        image.save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=4)
    elif fmt == "png":
        image.save(buffer, "PNG", compress_level=PNG_LEVEL)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    return buffer.getvalue()


def render(item: SampleItem, seed: int) -> bytes:
    """The encoded bytes of one planned image; depends only on (item, seed)."""
    rng = np.random.default_rng((seed, 1, item.index))
    content = optical_blur(rng, render_content(rng, item.labels[1], item.width, item.height))
    return encode(finish(rng, content, item.labels[3]), item.format, item.quality)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_item(job: tuple[Path, SampleItem, int]) -> int:
    """Render one image into the tree; returns its size in bytes (a worker-process entry point)."""
    out, item, seed = job
    data = render(item, seed)
    _write_atomic(out / item.path, data)
    return len(data)


# ------------------------------------------------------------------------------------------- driver

def _tick(bar: tqdm, size: int) -> int:
    bar.update()
    return size


def _summarise(out: Path, options: SampleOptions, items: list[SampleItem], sizes: list[int],
               seconds: float) -> SampleSummary:
    names = VOCABULARIES["generator"]
    generators = Counter(item.labels[3] for item in items)
    contents = Counter(item.labels[1] for item in items)
    by_format = {f: (sum(1 for i in items if i.format == f and i.labels[0] == 0),
                     sum(1 for i in items if i.format == f and i.labels[0] == 1)) for f in FORMATS}
    return SampleSummary(
        out=out, formats=options.formats, max_side=options.max_side,
        by_split={s: sum(1 for i in items if i.split == s) for s in SPLITS},
        by_generator={names[g]: generators[g] for g in sorted(generators)},
        by_format={f: rs for f, rs in by_format.items() if sum(rs)},
        by_content={VOCABULARIES["content"][c]: contents[c] for c in sorted(contents)},
        total_bytes=sum(sizes), seconds=seconds,
    )


def write_sample(out: Path, options: SampleOptions = SampleOptions(),
                 progress: bool = True) -> SampleSummary:
    """Write the stand-in dataset under `out`: the image tree, then `train.txt`, `calibration.txt` and
    `test.txt` in the official annotation format.

    Annotation files are removed first and written last (temporary name, then rename), so a killed run
    leaves none of them; re-running with the same options rewrites identical bytes.
    """
    started = time.perf_counter()
    items = plan_sample(options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out / f"{split}.txt").unlink(missing_ok=True)
    jobs = [(out, item, options.seed) for item in items]
    with tqdm(total=len(jobs), desc="sample", unit="img", disable=not progress) as bar:
        if options.workers == 1:
            sizes = [_tick(bar, _write_item(job)) for job in jobs]
        else:
            with ProcessPoolExecutor(options.workers) as pool:
                sizes = [_tick(bar, size) for size in pool.map(_write_item, jobs, chunksize=8)]
    for split in SPLITS:
        lines = [format_line(item.path, item.labels) for item in items if item.split == split]
        _write_atomic(out / f"{split}.txt", ("\n".join(lines) + "\n").encode())
    return _summarise(out, options, items, sizes, time.perf_counter() - started)
