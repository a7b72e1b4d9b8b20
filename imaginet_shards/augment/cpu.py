"""The CPU implementation of the perturbation spec: decode, execute `decisions.Op`s, normalise.

Images are uint8 tensors [3, H, W] until `normalize`, which runs on whole batches (on the training
device), so workers ship 4x fewer bytes than float32 would take. The operations themselves run on
the HWC arrays the decoders give (the tensors are views of them): crops, turns and flips move no
pixel, and the result is copied into [3, H, W] once. Images go through windows.py,
which decodes only what a leading crop needs (as in `train`; libjpeg-turbo's partial decompression
for JPEG); the rare images outside its fast paths decode whole through OpenCV, then get cropped:
nothing else runs on the full image.

The pixel operations are OpenCV's, called as the reference's albumentations 1.3.1 calls them, so
they give its pixels: reflect-101 padding, resizing without antialiasing, Gaussian blur with
OpenCV's sigma rule and reflect-101 borders, and re-compression through `cv2.imencode`/`imdecode`
on the RGB array (which OpenCV takes for BGR: the chroma damage sees red and blue swapped).
`encode` (PIL) writes files instead: real colours, as `perturb` stores them.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import torch
from PIL import Image

from imaginet_shards.augment.decisions import (
    BlurOp,
    CompressOp,
    CropOp,
    FlipOp,
    NoiseOp,
    Op,
    PadOp,
    ResizeOp,
    RotOp,
    draw_params,
)
from imaginet_shards.augment.noise import noise_field
from imaginet_shards.augment.spec import Preset
from imaginet_shards.codecs.windows import decode_whole, decode_window
from imaginet_shards.format.images import check_image
from imaginet_shards.format.tiles import TiledImage

_PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
_CV_FORMATS = {"jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY)}
_CV_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                      "lanczos4": cv2.INTER_LANCZOS4}


def decode(data: bytes) -> torch.Tensor:
    """JPEG/PNG/WebP bytes -> uint8 RGB [3, H, W]. Raises ValueError (`images.ImageCheckError`) for
    non-images, truncated images and images above `images.MAX_PIXELS` (checked on the header,
    before anything is decoded: decompression bombs), ValueError for other decoder failures."""
    info = check_image(data)
    return _decode_checked(data, CropOp(0, 0, info.height, info.width))[0]


def _decode_checked(data: bytes | TiledImage, crop: CropOp) -> tuple[torch.Tensor, bool]:
    """(pixels, whether they are `crop`'s): the window through windows.py, else the whole image
    through OpenCV. windows.py also keeps corrupt PNGs away from full decoders' libpng bindings,
    some of which crash the process on them (a bad IDAT checksum) instead of raising."""
    try:
        window = decode_window(data, crop.top, crop.left, crop.height, crop.width)
    except ValueError as exc:
        raise ValueError(f"corrupt image: {exc}") from None
    if window is None:
        assert not isinstance(data, TiledImage)  # windows.py decodes every window of those
        return torch.from_numpy(decode_whole(data)).permute(2, 0, 1), False
    return torch.from_numpy(window).permute(2, 0, 1), True


def encode(image: torch.Tensor, fmt: str, quality: int | None = None) -> bytes:
    """uint8 [3, H, W] -> `fmt` ("jpeg", "webp" or "png") bytes; `quality` for the lossy formats."""
    if fmt not in _PIL_FORMATS:
        raise ValueError(f"cannot encode format {fmt!r}; choose one of {sorted(_PIL_FORMATS)}")
    out = io.BytesIO()
    options = {} if quality is None else {"quality": int(quality)}
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(out, _PIL_FORMATS[fmt], **options)
    return out.getvalue()


def _apply_array(image: np.ndarray, op: Op) -> np.ndarray:
    """Execute one operation on a uint8 HWC array: crops, rotations and flips are views."""
    if isinstance(op, CropOp):
        return image[op.top:op.top + op.height, op.left:op.left + op.width]
    if isinstance(op, RotOp):
        return np.rot90(image, op.quarters)
    if isinstance(op, FlipOp):
        return image[::-1 if op.vertical else 1, ::-1 if op.horizontal else 1]
    if isinstance(op, NoiseOp):
        return _add_noise(image, op)
    return apply_cv(image, op)


def _add_noise(image: np.ndarray, op: NoiseOp) -> np.ndarray:
    """`op`'s noise field added in float32, clipped to [0, 255] and truncated, as numpy's cast
    does."""
    noise = noise_field(op, *image.shape[:2])
    noise += image
    return np.clip(noise, 0, 255, out=noise).astype(np.uint8)


def apply_cv(image: np.ndarray, op: Op) -> np.ndarray:
    """The OpenCV operations (pad, resize, blur, re-compression) on a uint8 HWC array."""
    image = np.ascontiguousarray(image)
    if isinstance(op, PadOp):
        height, width = image.shape[:2]
        top, left = (op.height - height) // 2, (op.width - width) // 2
        return cv2.copyMakeBorder(image, top, op.height - height - top, left,
                                  op.width - width - left, cv2.BORDER_REFLECT_101)
    if isinstance(op, ResizeOp):
        if image.shape[:2] == (op.size, op.size):
            return image
        return cv2.resize(image, (op.size, op.size), interpolation=_CV_INTERPOLATIONS[op.interpolation])
    if isinstance(op, BlurOp):
        return cv2.GaussianBlur(image, (op.kernel, op.kernel), 0)
    if isinstance(op, CompressOp):
        extension, flag = _CV_FORMATS[op.format]
        ok, encoded = cv2.imencode(extension, image, (int(flag), int(op.quality)))
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is None:
            raise ValueError(f"OpenCV could not re-encode a {image.shape} image as {op.format}")
        return decoded
    raise ValueError(f"unknown operation {op!r}")


def apply_ops(image: torch.Tensor, ops: tuple[Op, ...]) -> torch.Tensor:
    """Execute `ops` in order on a uint8 [3, H, W] image; the result is contiguous. The chain runs
    on the HWC array the decoders give (the tensor's view of it), copied into [3, H, W] once."""
    pixels = image.permute(1, 2, 0).numpy()
    for op in ops:
        pixels = _apply_array(pixels, op)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def decode_for(data: bytes | TiledImage, preset: Preset, rng: np.random.Generator
               ) -> tuple[torch.Tensor, tuple[Op, ...], tuple[Op, ...]]:
    """(image, the operations `preset` draws from `rng` for it, those still to apply): a leading
    crop is done by decoding only its window where the format allows. Errors as `decode`."""
    info = data.header if isinstance(data, TiledImage) else check_image(data)
    ops = draw_params(preset, rng, info.height, info.width)
    leading = ops[0] if ops and isinstance(ops[0], CropOp) else None
    image, cropped = _decode_checked(data, leading or CropOp(0, 0, info.height, info.width))
    return image, ops, ops[1:] if cropped and leading else ops


def augment(data: bytes | TiledImage, preset: Preset, rng: np.random.Generator) -> torch.Tensor:
    """Decode one image and apply `preset` with decisions drawn from `rng`: uint8 [3, S, S]."""
    image, _, remaining = decode_for(data, preset, rng)
    return apply_ops(image, remaining)


def normalize(images: torch.Tensor, preset: Preset) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, scaled to [0, 1] then standardised with the preset's mean/std
    (on the tensor's device). On the CPU through numpy, on the calling thread: torch's thread pool
    would spin on cores the loader's workers need, and numpy's float32 operations round exactly as
    torch's do (the same values, tests compare every uint8 value in every channel)."""
    if images.device.type == "cpu":
        return torch.from_numpy(_normalize_array(images.numpy(), preset))
    images = images.float().div_(255)
    if not preset.normalize:
        return images
    mean = torch.tensor(preset.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(preset.std, device=images.device).view(1, 3, 1, 1)
    return images.sub_(mean).div_(std)


def _normalize_array(images: np.ndarray, preset: Preset) -> np.ndarray:
    """`normalize` of a uint8 [N, 3, H, W] array, in place on one float32 copy."""
    out = images.astype(np.float32)
    out /= np.float32(255)
    if preset.normalize:
        out -= np.asarray(preset.mean, np.float32).reshape(1, 3, 1, 1)
        out /= np.asarray(preset.std, np.float32).reshape(1, 3, 1, 1)
    return out
