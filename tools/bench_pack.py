#!/usr/bin/env python3
"""Pack throughput beside GNU `tar cf` of the same files, in one run on this machine.

    python tools/bench_pack.py                       # embedded sample at realistic sizes (max side 1024)
    python tools/bench_pack.py --count 600 --max-side 640   # smaller files (~250 KB on average)
    python tools/bench_pack.py --root R --annotations A

Both read the same files from a warm page cache and write to the same disk; pack also hashes every
image, writes `.cls/.labels/.json` members, DALI indexes and the manifest. Pack's CPU time is split
into its serial part (parsing, locating the files and planning, in this process) and its workers'.
With `--stages`, one process then times each step of a worker on every file, to say where the time
goes. The load average is printed: on a busy machine the wall-clock figures say more about the load.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from imaginet_shards.cli_common import run_command, run_tool, write_json
from imaginet_shards.format.annotations import read_annotations
from imaginet_shards.format.images import check_image
from imaginet_shards.format.tar import ShardWriter
from imaginet_shards.ops.pack import PackOptions, PlannedSample, pack, sample_members

STAGES = ("read", "check", "members", "write")
HASH = "one sha256 pass"  # timed beside the steps, not one of them: pack makes two per image


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its reaped children (tar, pack's workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _timed(fn) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds here, CPU seconds of children) of fn(): CPU time is the steadier
    figure on a shared machine."""
    started, (own, children) = time.perf_counter(), _cpu_seconds()
    fn()
    own_after, children_after = _cpu_seconds()
    return time.perf_counter() - started, own_after - own, children_after - children


def stage_times(root: Path, samples: list[PlannedSample], out: Path) -> dict[str, float]:
    """CPU ms per file of each step a pack worker takes, in this process, over every sample: read
    the file, check the image (format, size, completeness), build its members (sha256 of the image,
    the .json), append them to a shard at `out` (tar headers, the shard's sha256, the write); and,
    apart, one sha256 pass over the image's bytes."""
    clock, totals = time.process_time_ns, dict.fromkeys((*STAGES, HASH), 0)
    with open(out, "wb") as stream:
        writer = ShardWriter(stream)
        for sample in samples:
            started = clock()
            data = (root / sample.path).read_bytes()
            read = clock()
            info = check_image(data)
            checked = clock()
            members = sample_members(sample.key, data, info, sample)
            built = clock()
            writer.add_sample(sample.key, members)
            written = clock()
            hashlib.sha256(data).digest()
            for stage, took in zip((*STAGES, HASH), (read - started, checked - read, built - checked,
                                                     written - built, clock() - written)):
                totals[stage] += took
        writer.close()
    out.unlink()
    return {stage: total / len(samples) / 1e6 for stage, total in totals.items()}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="Dataset root (default: generate the sample).")
    parser.add_argument("--annotations", type=Path, help="Annotation file of the images under --root.")
    parser.add_argument("--count", type=int, default=400, help="Sample images to generate.")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="Longest side of the generated images (1024: ImagiNet's sizes).")
    parser.add_argument("--workers", type=int, default=2, help="Pack worker processes.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats (the best is kept).")
    parser.add_argument("--stages", action="store_true",
                        help="Also time each step of a pack worker (read, check, members, write) "
                             "in one process, best of --repeats.")
    parser.add_argument("--json", help="Also write the figures as JSON ('-': stdout, the table goes to stderr).")
    return parser


def main(args: argparse.Namespace) -> None:
    if (args.root is None) != (args.annotations is None):
        raise ValueError("--root and --annotations go together")
    out = sys.stderr if args.json == "-" else sys.stdout
    work = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    try:
        if args.root is None:
            from imaginet_shards.sample import SampleOptions, write_sample

            args.root = work / "sample"
            write_sample(args.root, SampleOptions(count=args.count, max_side=args.max_side,
                                                       formats="realistic"))
            args.annotations = work / "all.txt"
            args.annotations.write_text("".join((args.root / f"{split}.txt").read_text()
                                                for split in ("train", "calibration", "test")))
        frame = read_annotations(args.annotations)
        paths = list(frame["path"])
        samples = [PlannedSample(f"{number:09d}", row.path, row.line, (row.origin, row.content,
                                 row.family, row.generator), 0)
                   for number, row in enumerate(frame.itertuples(index=False))]
        source_bytes = sum((args.root / p).stat().st_size for p in paths)
        listing = work / "files.txt"
        listing.write_text("\n".join(paths) + "\n")
        run_command(["tar", "cf", "/dev/null", "-C", str(args.root), "-T", str(listing)])
        load = os.getloadavg()[0]
        tar_times, pack_times = [], []
        for repeat in range(args.repeats):
            tar_out = work / f"tar-{repeat}.tar"
            tar_times.append(_timed(partial(run_command, [
                "tar", "cf", str(tar_out), "-C", str(args.root), "-T", str(listing)])))
            tar_out.unlink()
            dest = work / f"pack-{repeat}"
            pack_times.append(_timed(partial(pack, PackOptions(
                root=args.root, annotations=args.annotations, out=dest, workers=args.workers,
                max_count=100, progress=False))))
            shutil.rmtree(dest)
        load = max(load, os.getloadavg()[0])
        # After the timed runs: its writes would otherwise be flushed to disk during them.
        stages = [stage_times(args.root, samples, work / "stages.tar")
                  for _ in range(args.repeats if args.stages else 0)]

        def per_file(seconds: float) -> float:
            return round(seconds / len(paths) * 1e3, 2)

        tar_mbs = source_bytes / 1e6 / min(wall for wall, _, _ in tar_times)
        pack_mbs = source_bytes / 1e6 / min(wall for wall, _, _ in pack_times)
        tar_cpu = per_file(min(own + children for _, own, children in tar_times))
        serial_cpu = per_file(min(own for _, own, _ in pack_times))
        worker_cpu = per_file(min(children for _, _, children in pack_times))
        pack_cpu = per_file(min(own + children for _, own, children in pack_times))
        result = {"files": len(paths), "source_mb": round(source_bytes / 1e6, 1),
                  "tar_mb_per_sec": round(tar_mbs, 1), "pack_mb_per_sec": round(pack_mbs, 1),
                  "pack_workers": args.workers, "ratio": round(pack_mbs / tar_mbs, 2),
                  "tar_cpu_ms_per_file": tar_cpu, "pack_cpu_ms_per_file": pack_cpu,
                  "pack_serial_cpu_ms_per_file": serial_cpu, "pack_worker_cpu_ms_per_file": worker_cpu,
                  "load_average": round(load, 2)}
        print(f"{len(paths)} files, {source_bytes / 1e6:.1f} MB, best of {args.repeats}, "
              f"load average up to {load:.2f} on {os.cpu_count()} CPUs:", file=out)
        print(f"  tar cf                      {tar_mbs:8.1f} MB/s  {tar_cpu:5.2f} CPU ms/file", file=out)
        print(f"  imaginet-shards pack (x{args.workers})   {pack_mbs:8.1f} MB/s  {pack_cpu:5.2f} CPU ms/file "
              f"({pack_mbs / tar_mbs:.2f}x tar; sha256, indexes and manifest included)", file=out)
        print(f"    of which this process (parse, locate, plan, manifest) {serial_cpu:5.2f}, "
              f"the workers {worker_cpu:5.2f}", file=out)
        if stages:
            best = {stage: min(run[stage] for run in stages) for stage in (*STAGES, HASH)}
            result["worker_step_cpu_ms_per_file"] = {stage: round(ms, 3) for stage, ms in best.items()}
            print("    a worker's steps (one process, CPU ms/file): "
                  + ", ".join(f"{stage} {best[stage]:.3f}" for stage in STAGES)
                  + f" (sum {sum(best[stage] for stage in STAGES):.3f}); {HASH} over the image "
                  f"{best[HASH]:.3f} (members and write make one each)", file=out)
        if args.json:
            write_json(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_tool(parser(), main)
