"""The model in the loop: is training input-bound?

Runs a training step (the trainer supplies it: `imaginet-train bench --model ARCH`) on the loader's
batches. The rate the model needs is its rate without a loader (on a synthetic batch). The
input-bound fraction is the share of the loop's time the model alone would not need,
1 - loop rate / model rate: time blocked waiting for the next batch (also reported alone, as
`wait_fraction`) plus, on a CPU device, the slowdown of sharing the cores with the loader, which
no wait shows (a prefetching loader hands over batches at once and then competes for the CPU).
The threads or workers that reach the model's rate come from the full-pipeline results of a bench
matrix on the same machine.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from imaginet_shards.bench.run import BenchOptions, BenchResult, open_stream

Step = Callable[[torch.Tensor, torch.Tensor], None]  # one training step on (images, labels)
StepFactory = Callable[[str, str], Step]  # (arch, device) -> a step of a fresh model
INPUT_BOUND = 0.1  # above this input-bound fraction, training is called input-bound


@dataclass(frozen=True)
class ModelReport:
    """What `run_model_bench` measured (fractions of the loop's wall time); `threads_needed` is
    None when no tested count suffices."""

    arch: str
    backend: str
    threads: int
    device: str
    batch_size: int
    crop: int
    steps: int
    model_images_per_sec: float
    loop_images_per_sec: float
    wait_fraction: float
    input_bound_fraction: float
    input_bound: bool
    threads_needed: int | None
    cores_per_1000_images_per_sec: float | None
    verdict: str

    def record(self) -> dict:
        return asdict(self)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _model_rate(step: Step, options: BenchOptions, steps: int, warmup: int) -> float:
    """Median images/s of `step` on one synthetic batch (random pixels, both origins, all four
    families), before any loader runs."""
    size, n = options.resolved_preset().size, options.batch_size
    images = torch.randn(n, 3, size, size)
    labels = torch.zeros(n, 4, dtype=torch.int64)
    labels[:, 0], labels[:, 2] = torch.arange(n) % 2, torch.arange(n) % 4
    rates = []
    for i in range(warmup + steps):
        begin = time.perf_counter()
        step(images, labels)
        _sync(options.device)
        if i >= warmup:
            rates.append(n / (time.perf_counter() - begin))
    return statistics.median(rates)


def _matching(results: Sequence[BenchResult], options: BenchOptions) -> list[BenchResult]:
    """The full-pipeline results of the same backend, preset, crop and device."""
    crop = options.resolved_preset().size
    return [r for r in results if (r.backend, r.preset, r.crop, r.device) ==
            (options.backend, options.preset, crop, options.device)]


def threads_needed(rate: float, results: Sequence[BenchResult], options: BenchOptions
                   ) -> int | None:
    """The fewest threads whose full-pipeline rate (same backend, preset, crop, device) reaches
    `rate`, or None."""
    return min((r.threads for r in _matching(results, options) if r.images_per_sec >= rate),
               default=None)


def cores_per_1000(results: Sequence[BenchResult], options: BenchOptions) -> float | None:
    """CPU cores the loader needs to feed 1,000 images/s (its CPU ms per image, at the bench's
    thread count when measured, else the cheapest count): what a GPU node must budget per
    1,000 images/s of training, whatever this machine's model rate."""
    matches = _matching(results, options)
    same = [r for r in matches if r.threads == options.threads]
    costs = [r.cpu_ms_per_image for r in (same or matches)]
    return round(min(costs), 2) if costs else None


def run_model_bench(options: BenchOptions, arch: str, make_step: StepFactory, steps: int = 10,
                    warmup: int = 2, results: Sequence[BenchResult] = ()) -> ModelReport:
    """The model alone (`warmup` + `steps` steps on a synthetic batch), then with the loader
    (`warmup` untimed steps, `steps` timed); `make_step(arch, device)` builds the step."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    torch.manual_seed(options.seed)
    step = make_step(arch, options.device)
    model_rate = _model_rate(step, options, steps, warmup)
    stream = iter(open_stream(options)[0])
    for _ in range(warmup):
        step(*next(stream))
    waited = computed = 0.0
    images = 0
    for _ in range(steps):
        begin = time.perf_counter()
        batch = next(stream)
        ready = time.perf_counter()
        step(*batch)
        _sync(options.device)
        waited, computed = waited + ready - begin, computed + time.perf_counter() - ready
        images += len(batch[0])
    loop_rate, wait = images / (waited + computed), waited / (waited + computed)
    fraction = min(max(1 - loop_rate / model_rate, 0.0), 1.0)
    needed = threads_needed(model_rate, results, options)
    cores = cores_per_1000(results, options)
    bound = fraction > INPUT_BOUND
    reach = (f"{needed} thread(s) reach it here" if needed is not None
             else "no tested thread count reaches it here")
    if cores is not None:
        reach += f"; feeding 1,000 images/s takes {cores:.1f} cores of this loader"
    verdict = (f"{'input-bound' if bound else 'compute-bound'}: the model alone takes "
               f"{model_rate:.0f} images/s, with the {options.backend} loader at "
               f"{options.threads} threads it gets {loop_rate:.0f} ({fraction:.0%} of the time "
               f"lost to input, {wait:.0%} waiting for batches); {reach}")
    return ModelReport(arch, options.backend, options.threads, options.device, options.batch_size,
                       options.resolved_preset().size, steps, round(model_rate, 2),
                       round(loop_rate, 2), round(wait, 3),
                       round(fraction, 3), bound, needed, cores, verdict)
