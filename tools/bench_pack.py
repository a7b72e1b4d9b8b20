#!/usr/bin/env python3
"""Pack throughput beside GNU `tar cf` of the same files, in one run on this machine.

    python tools/bench_pack.py                       # embedded sample at realistic sizes (max side 1024)
    python tools/bench_pack.py --count 600 --max-side 640   # smaller files (~260 KB on average)
    python tools/bench_pack.py --root R --annotations A

Both read the same files from a warm page cache and write to the same disk; pack also hashes every
image, writes `.cls/.labels/.json` members, DALI indexes and the manifest.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from imaginet_shards.cli_common import run_command, run_tool, write_json
from imaginet_shards.format.annotations import read_annotations
from imaginet_shards.ops.pack import PackOptions, pack


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (tar, pack's workers)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(): CPU time is the steadier figure on a shared machine."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - started, _cpu_seconds() - cpu


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="Dataset root (default: generate the sample).")
    parser.add_argument("--annotations", type=Path, help="Annotation file of the images under --root.")
    parser.add_argument("--count", type=int, default=400, help="Sample images to generate.")
    parser.add_argument("--max-side", type=int, default=1024,
                        help="Longest side of the generated images (1024: ImagiNet's sizes).")
    parser.add_argument("--workers", type=int, default=2, help="Pack worker processes.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats (the best is kept).")
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
        paths = list(read_annotations(args.annotations)["path"])
        source_bytes = sum((args.root / p).stat().st_size for p in paths)
        listing = work / "files.txt"
        listing.write_text("\n".join(paths) + "\n")
        run_command(["tar", "cf", "/dev/null", "-C", str(args.root), "-T", str(listing)])
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
        tar_mbs = source_bytes / 1e6 / min(wall for wall, _ in tar_times)
        pack_mbs = source_bytes / 1e6 / min(wall for wall, _ in pack_times)
        tar_cpu, pack_cpu = (min(cpu for _, cpu in times) / len(paths) * 1e3
                             for times in (tar_times, pack_times))
        result = {"files": len(paths), "source_mb": round(source_bytes / 1e6, 1),
                  "tar_mb_per_sec": round(tar_mbs, 1), "pack_mb_per_sec": round(pack_mbs, 1),
                  "pack_workers": args.workers, "ratio": round(pack_mbs / tar_mbs, 2),
                  "tar_cpu_ms_per_file": round(tar_cpu, 2), "pack_cpu_ms_per_file": round(pack_cpu, 2)}
        print(f"{len(paths)} files, {source_bytes / 1e6:.1f} MB, best of {args.repeats}:", file=out)
        print(f"  tar cf                      {tar_mbs:8.1f} MB/s  {tar_cpu:5.2f} CPU ms/file", file=out)
        print(f"  imaginet-shards pack (x{args.workers})   {pack_mbs:8.1f} MB/s  {pack_cpu:5.2f} CPU ms/file "
              f"({pack_mbs / tar_mbs:.2f}x tar; sha256, indexes and manifest included)", file=out)
        if args.json:
            write_json(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_tool(parser(), main)
