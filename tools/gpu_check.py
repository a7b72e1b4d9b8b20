"""GPU check: one command for a machine with one NVIDIA GPU and only torch and
torchvision installed. From the repository root:

    PYTHONPATH=. python tools/gpu_check.py --out gpu_check.json

measures, after warm-up, (1) the trainer's SelfCon step (forward, loss, backward, SGD) of
`resnet50nodown` at 96 px with bf16 autocast and channels_last, images/s; (2) torchvision's batched
GPU JPEG decode (`decode_jpeg(..., device="cuda")`), images/s, on JPEGs made on the fly from
synthetic images (nothing travels with the script); (3) a DALI mixed-device decode of the same
JPEGs where `nvidia.dali` imports. Imports only the standard library, torch, torchvision,
`imaginet_train.model` and `.losses` and `imaginet_shards.cli_common` (themselves torch, torchvision
and the standard library only; `tests/test_bench_matrix.py` checks that). Writes the figures as
JSON to `--out` and stdout (`--out -`: stdout only). Without CUDA it exits with status 2 and says
so. Takes a few minutes at the defaults.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import decode_jpeg, encode_jpeg

from imaginet_shards.cli_common import EXIT_ERROR, run_tool, write_json
from imaginet_train.losses import imaginet_selfcon_loss
from imaginet_train.model import build_model


def timed(fn: Callable[[], int], warmup: int, repeats: int) -> float:
    """Median items/s of `fn` (which returns how many items it processed) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    rates = []
    for _ in range(repeats):
        begin = time.perf_counter()
        count = fn()
        torch.cuda.synchronize()
        rates.append(count / (time.perf_counter() - begin))
    return statistics.median(rates)


def train_rate(arch: str, batch: int, size: int, warmup: int, repeats: int) -> float:
    """Images/s of the trainer's SelfCon step with bf16 autocast and channels_last (synthetic
    images; labels with both origins and all four families)."""
    model = build_model(arch).cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device="cuda").contiguous(
        memory_format=torch.channels_last)
    labels = torch.zeros(batch, 4, dtype=torch.int64, device="cuda")
    labels[:, 0], labels[:, 2] = torch.arange(batch) % 2, torch.arange(batch) % 4

    def step() -> int:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            features = torch.stack(model(images), 1)
        loss = imaginet_selfcon_loss(features.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return batch
    return timed(step, warmup, repeats)


def sample_jpegs(count: int, side: int) -> list[torch.Tensor]:
    """`count` JPEG byte tensors of smooth synthetic side x side images (quality 90)."""
    generator = torch.Generator().manual_seed(0)
    jpegs = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=generator)
        image = F.interpolate(coarse, size=(side, side), mode="bicubic").clamp(0, 1)
        jpegs.append(encode_jpeg((image[0] * 255).to(torch.uint8), quality=90))
    return jpegs


def torchvision_decode_rate(jpegs: list[torch.Tensor], warmup: int, repeats: int) -> float:
    """Images/s of batched `decode_jpeg(..., device="cuda")`."""
    return timed(lambda: len(decode_jpeg(jpegs, device="cuda")), warmup, repeats)


def dali_decode_rate(jpegs: list[torch.Tensor], batch: int, warmup: int, repeats: int) -> float:
    """Images/s of DALI's mixed-device decoder on the same JPEGs (ImportError without DALI)."""
    from nvidia.dali import fn, pipeline_def, types

    arrays = [j.numpy() for j in jpegs]
    batches = [arrays[i:i + batch] for i in range(0, len(arrays), batch)]

    @pipeline_def(batch_size=batch, num_threads=4, device_id=0, prefetch_queue_depth=1,
                  exec_async=False, exec_pipelined=False)
    def pipeline():
        encoded = fn.external_source(name="encoded")
        return fn.decoders.image(encoded, device="mixed", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()

    def run() -> int:
        for chunk in batches:
            pipe.feed_input("encoded", chunk)
            pipe.run()
        return len(arrays)
    return timed(run, warmup, repeats)


def machine() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1),
            "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "os": platform.platform()}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json",
                        help="JSON file for the figures ('-': stdout only).")
    parser.add_argument("--arch", default="resnet50nodown", help="Model of the training step.")
    parser.add_argument("--size", type=int, default=96, help="Training crop side.")
    parser.add_argument("--batch", type=int, default=128, help="Training batch size.")
    parser.add_argument("--images", type=int, default=256, help="Sample JPEGs to decode.")
    parser.add_argument("--jpeg-side", type=int, default=512, help="Side of the sample JPEGs.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls before timing.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed calls (figures are medians).")
    return parser


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print("Error: CUDA is not available here (no NVIDIA GPU or driver visible to torch "
              f"{torch.__version__}); run gpu_check on a machine with one NVIDIA GPU.", file=sys.stderr)
        return EXIT_ERROR
    jpegs = sample_jpegs(args.images, args.jpeg_side)
    result = {
        "machine": machine(),
        "settings": vars(args) | {
                                  "jpeg_mib": round(sum(j.numel() for j in jpegs) / 2**20, 2)},
        "train_images_per_sec": round(train_rate(args.arch, args.batch, args.size, args.warmup,
                                                 args.repeats), 1),
        "torchvision_gpu_decode_images_per_sec": round(torchvision_decode_rate(
            jpegs, args.warmup, args.repeats), 1),
    }
    try:
        dali = round(dali_decode_rate(jpegs, min(args.batch, len(jpegs)), args.warmup,
                                      args.repeats), 1)
    except ImportError:
        dali = "DALI is not installed"
    except RuntimeError as exc:  # DALI present but unusable here: keep the other figures
        dali = f"DALI failed: {exc}"
    result["dali_gpu_decode_images_per_sec"] = dali
    write_json(args.out, result)
    if args.out != "-":
        write_json("-", result)
    return 0


if __name__ == "__main__":
    run_tool(parser(), main)
