"""GPU check of how DALI decodes a crop-sized window of a JPEG, the training presets' JPEG route.
From the repository root, on a machine with one NVIDIA GPU, torch and DALI:

    PYTHONPATH=. python tools/gpu_jpeg_crops.py --out gpu_jpeg_crops.json

decodes the same random `--crop` windows of synthetic textured JPEGs (4:2:0, the camera and
generator norm) in five ways: the CPU ROI decode with fancy upsampling (libjpeg-turbo, what the CPU
backend and the reference's PIL produce: the pixel reference), and on the GPU ("mixed") an ROI decode
with fancy or simple upsampling, or a full decode with fancy or simple upsampling then a crop. For each
it prints images/s, CPU ms/image (all threads of this process) and the mean and largest |difference|
from the reference in 0-255 levels. nvImageCodec refuses nvJPEG's ROI decode with fancy upsampling
below nvJPEG 13.2 and hands those windows to another decoder, which this check makes visible.
Exit status 0 with figures, 2 without CUDA.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from typing import Any

import numpy as np
from PIL import Image

from imaginet_shards.cli_common import EXIT_ERROR, EXIT_OK, run_tool, write_json

WAYS: dict[str, tuple[str, bool, bool]] = {  # name -> (device, ROI decode, fancy upsampling)
    "cpu_roi_fancy": ("cpu", True, True),
    "gpu_roi_fancy": ("mixed", True, True),
    "gpu_roi_simple": ("mixed", True, False),
    "gpu_full_fancy_then_crop": ("mixed", False, True),
    "gpu_full_simple_then_crop": ("mixed", False, False),
}


def sample_jpegs(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    """`count` quality-90 4:2:0 JPEGs of side x side images with smooth colour and fine texture."""
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float32)
        texture = rng.normal(0, 12, (side, side, 1)).astype(np.float32)
        image = np.clip(smooth + texture, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="JPEG", quality=90, subsampling=2)
        jpegs.append(np.frombuffer(out.getvalue(), dtype=np.uint8))
    return jpegs


def differences(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    """Mean and largest |other - reference| over all pixels, in levels."""
    gaps = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(reference, other)]
    return {"mean_abs": round(float(np.mean([g.mean() for g in gaps])), 4),
            "max_abs": int(max(g.max() for g in gaps))}


def build(way: str, batch: int, crop: int, threads: int) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    device, roi, fancy = WAYS[way]

    @pipeline_def(batch_size=batch, num_threads=threads,
                  device_id=0 if device == "mixed" else None, prefetch_queue_depth=1,
                  exec_dynamic=True)
    def pipeline():
        encoded = fn.external_source(name="encoded")
        start = fn.external_source(name="start")
        if roi:
            return fn.decoders.image_slice(encoded, start=start, shape=[crop, crop],
                                           axis_names="HW", device=device, output_type=types.RGB,
                                           jpeg_fancy_upsampling=fancy)
        image = fn.decoders.image(encoded, device=device, output_type=types.RGB,
                                  jpeg_fancy_upsampling=fancy)
        return fn.slice(image, start=start, shape=[crop, crop], axis_names="HW")

    pipe = pipeline()
    pipe.build()
    return pipe


def run_way(way: str, jpegs: list[np.ndarray], starts: list[np.ndarray], args: argparse.Namespace
            ) -> tuple[list[np.ndarray], dict[str, float]]:
    """(crops of one pass, speed) of one way of decoding."""
    pipe = build(way, args.batch, args.crop, args.threads)
    chunks = [(jpegs[i:i + args.batch], starts[i:i + args.batch])
              for i in range(0, len(jpegs) - args.batch + 1, args.batch)]

    def one_pass() -> list[np.ndarray]:
        crops: list[np.ndarray] = []
        for encoded, start in chunks:
            pipe.feed_input("encoded", encoded)
            pipe.feed_input("start", start)
            (out,) = pipe.run()
            out = out.as_cpu() if hasattr(out, "as_cpu") else out
            crops.extend(np.array(out[i]) for i in range(len(encoded)))
        return crops

    crops = one_pass()  # warm-up, and the pixels compared
    rates, cpu_ms = [], []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        one_pass()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(len(crops) / wall)
        cpu_ms.append(1000 * cpu / len(crops))
    return crops, {"images_per_sec": round(statistics.median(rates), 1),
                   "cpu_ms_per_image": round(statistics.median(cpu_ms), 3)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_jpeg_crops.json",
                        help="JSON file for the figures ('-': stdout only).")
    parser.add_argument("--images", type=int, default=512, help="Sample JPEGs.")
    parser.add_argument("--side", type=int, default=1024, help="Side of the sample JPEGs.")
    parser.add_argument("--crop", type=int, default=96, help="Side of the decoded windows.")
    parser.add_argument("--batch", type=int, default=128, help="Batch size.")
    parser.add_argument("--threads", type=int, default=4, help="DALI CPU threads.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes (medians).")
    return parser


def main(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("Error: no CUDA here; run gpu_jpeg_crops on a machine with an NVIDIA GPU.",
              file=sys.stderr)
        return EXIT_ERROR
    jpegs = sample_jpegs(args.images, args.side)
    rng = np.random.default_rng(1)
    starts = [rng.integers(0, args.side - args.crop + 1, 2).astype(np.int32) for _ in jpegs]
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "settings": vars(args)}
    reference: list[np.ndarray] = []
    for way in WAYS:
        crops, speed = run_way(way, jpegs, starts, args)
        reference = reference or crops
        result[way] = speed | differences(reference, crops)
        print(f"{way:28s} {result[way]}", flush=True)
    write_json(args.out, result)
    return EXIT_OK


if __name__ == "__main__":
    run_tool(parser(), main)
