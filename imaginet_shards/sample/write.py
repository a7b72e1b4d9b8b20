"""`write_sample(OUT)`: render every planned image in parallel, atomically, with a summary.

A seed fixes every byte, whatever the number of worker processes.
"""

import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from imaginet_shards.format.annotations import VOCABULARIES, format_line
from imaginet_shards.procs import process_pool
from imaginet_shards.sample.plan import SampleItem, SampleOptions, plan_sample
from imaginet_shards.sample.render import render
from imaginet_shards.sample.sources import FORMATS, SPLITS


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


def write_sample(out: Path, options: SampleOptions | None = None,
                 progress: bool = True) -> SampleSummary:
    """Write the stand-in dataset under `out`: the image tree, then `train.txt`, `calibration.txt` and
    `test.txt` in the official annotation format.

    Annotation files are removed first and written last (temporary name, then rename), so a killed run
    leaves none of them; re-running with the same options rewrites identical bytes.
    """
    started = time.perf_counter()
    options = SampleOptions() if options is None else options
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
            with process_pool(options.workers) as pool:
                sizes = [_tick(bar, size) for size in pool.map(_write_item, jobs, chunksize=8)]
    for split in SPLITS:
        lines = [format_line(item.path, item.labels) for item in items if item.split == split]
        _write_atomic(out / f"{split}.txt", ("\n".join(lines) + "\n").encode())
    return _summarise(out, options, items, sizes, time.perf_counter() - started)
