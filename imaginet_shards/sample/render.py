"""The pixels and bytes of one planned image, from its own RNG seeded by (seed, index).

Content. One distribution per content type, the same for real and synthetic rows: photos are random
crops of the two photographs scikit-learn ships, colour-jittered and mixed with 1/f texture; faces are
procedural portraits; paintings are brush strokes or flat anime-like colour; uncategorized is a mix.
Every image then gets a camera-like optical blur (the scene carries little energy at the finest scale)
and sensor-like grain, both drawn independently of the class; a synthetic image then gets its
generator's trace (`sources.TRACES`).
"""

import io
import math
from collections.abc import Callable
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from imaginet_shards.format.annotations import REAL_GENERATOR
from imaginet_shards.sample.plan import SampleItem
from imaginet_shards.sample.sources import (
    CONTENT_BLUR,
    ENERGY_MATCH,
    FORMATS,
    GEOMETRIES,
    GRAIN_RMS,
    PNG_LEVEL,
    TRACE_RMS,
    TRACES,
    TraceComponent,
)


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
        field = np.asarray(Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC))
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
    img = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
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
