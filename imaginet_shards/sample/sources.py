"""What the stand-in dataset imitates: ImagiNet's sources (folders, sizes, formats), label mixes and
the generator traces that separate synthetic from real images.

A synthetic image carries its generator's trace: a faint periodic pattern whose spectral peaks sit at
generator-specific frequencies, with a geometry shared by the family (`TRACES`). The peak sets are
symmetric under 90° rotations and flips, and the dominant component is fine-grained (period 2 to 4
pixels) so that it survives the `train` preset's perturbations except the strongest blur and
compression. To keep file sizes balanced, the trace takes the place of part of the grain.
"""

from dataclasses import dataclass
from typing import Literal

from imaginet_shards.format.annotations import VOCABULARIES

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


LSUN_CATEGORIES = ("airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
         "train", "tvmonitor")
WIKIART_STYLES = ("Impressionism", "Post_Impressionism", "Realism", "Romanticism", "Baroque",
                   "Expressionism", "Cubism", "Ukiyo_e")
PHOTOZILLA_CATEGORIES = ("nature", "architecture", "food", "street", "portrait", "animals", "sports", "night")
_PHOTO_4x3 = ((500, 375), (500, 333), (375, 500), (333, 500))
_COCO = ((640, 480), (640, 427), (480, 640), (427, 640))
_SQUARE = {side: ((side, side),) for side in (256, 512, 768, 1024)}

# Names, labels, sizes and formats follow the official annotation files (docs/architecture.md, "Annotations"); weights are each
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


def source_group(origin: int, content: int) -> list[int]:
    """Indexes of the sources of one class and content type."""
    return [i for i, s in enumerate(SOURCES) if s.labels[:2] == (origin, content)]


CONTENTS = range(len(VOCABULARIES["content"]))
# Images each content type needs in each class: 3 (one per split) for each of its sources.
CONTENT_FLOORS = [MIN_PER_SOURCE * max(len(source_group(o, c)) for o in (0, 1)) for c in CONTENTS]
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
