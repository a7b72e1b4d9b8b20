"""`retile`: the tiled training layout, a shard set derived from another in which each PNG image
(and, with `webp`, each WebP image, decoded once) is stored as independently decodable tiles in one
`{key}.tiles` member (`format.tiles`, `codecs.tiles`), so that a random crop inflates only the tiles
that cover it. JPEG images (and WebP without `webp`) keep their bytes and their `.json` unchanged.

Same shards, keys, order and labels as the source; each output shard is made from one source shard
alone (temporary name, then renamed), so the result does not depend on the number of workers. The
manifest records the source shard set's identity (the sha256 of its manifest.json) and, for every
tiled image, the sha256 of its decoded pixels (`codecs.tiles.pixels_sha256`), which `verify` checks.
The tiles hold exactly the pixels the loaders decode from the source image (`augment.cpu.decode`).
The original shards stay the archival format: the tiles do not keep the source file's bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaginet_shards.augment.cpu import decode
from imaginet_shards.codecs.tiles import encode_tiles, pixels_sha256
from imaginet_shards.errors import SampleError
from imaginet_shards.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    build_manifest,
    label_histogram,
)
from imaginet_shards.format.members import encode_members, label_members
from imaginet_shards.format.tar import ShardWriter
from imaginet_shards.format.tiles import RETILE_KEY, check_tile_size
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import ShardSet, load_index, open_shard_set, read_samples
from imaginet_shards.ops.perturb import prepare_destination, worker_map


@dataclass(frozen=True)
class RetileOptions:
    """What `retile` does: `source` (a shard set directory, manifest path or URL) to the local
    directory `out`, with `tile`-pixel tiles, WebP images tiled too when `webp`, in `workers`
    processes (1: in this process)."""

    source: str
    out: Path
    tile: int = 128
    webp: bool = False
    workers: int = 1
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_tile_size(self.tile)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def tiled_formats(webp: bool) -> tuple[str, ...]:
    """The image members `retile` tiles."""
    return ("png", "webp") if webp else ("png",)


def tile_image(data: bytes, tile: int) -> tuple[bytes, str, int, int]:
    """(`.tiles` member, sha256 of the decoded pixels, height, width) of one source image."""
    pixels = decode(data).permute(1, 2, 0).numpy()
    return encode_tiles(pixels, tile), pixels_sha256(pixels), pixels.shape[0], pixels.shape[1]


def retile_shard(shards: ShardSet, number: int, out: str, tile: int, webp: bool
                 ) -> tuple[dict, dict[str, str]]:
    """Write the tiled copy of shard `number` (tar under a temporary name, then renamed); return its
    manifest entry as a dict and {key: pixels sha256} of the images it tiled. Runs in a worker."""
    entry = shards.manifest.shards[number]
    out_dir, formats = Path(out), tiled_formats(webp)
    tmp = out_dir / f".{entry.name}.tmp"
    labels, pixels = [], {}
    try:
        with open(tmp, "wb") as stream:
            writer = ShardWriter(stream)
            for record in read_samples(shards, load_index(shards, entry), 0, entry.samples):
                if record.error or record.labels is None:
                    raise SampleError(entry.name, record.key, record.error or "no labels")
                sample_labels = tuple(int(v) for v in record.labels)
                if record.image_ext in formats:
                    try:
                        tiled, digest, height, width = tile_image(record.image, tile)
                        meta = json.loads(record.meta)
                    except ValueError as exc:
                        raise SampleError(entry.name, record.key, str(exc)) from None
                    meta["source"] = {"format": meta.get("format"), "bytes": len(record.image),
                                      "sha256": hashlib.sha256(record.image).hexdigest()}
                    meta.update(height=height, width=width, tile=tile)
                    members = encode_members(record.key, tiled, "tiles", sample_labels, meta)
                    pixels[record.key] = digest
                else:
                    members = [(record.image_ext, record.image), *label_members(sample_labels),
                               ("json", record.meta)]
                writer.add_sample(record.key, members)
                labels.append(sample_labels)
            size, digest, index = writer.close()
        storage.write_bytes(out_dir / entry.index, index.encode())
        os.replace(tmp, out_dir / entry.name)
    finally:
        tmp.unlink(missing_ok=True)
    return asdict(ShardEntry(entry.name, entry.index, len(labels), size, digest,
                             label_histogram(labels), entry.first_key)), pixels


def retile(options: RetileOptions) -> Manifest:
    """Write the tiled shard set at options.out (manifest.json last) and return its manifest."""
    shards = open_shard_set(options.source)
    out = prepare_destination(options.out, shards, options.overwrite)
    count = len(shards.manifest.shards)
    columns: list[list[Any]] = [[shards] * count, list(range(count)), [str(out)] * count,
                                [options.tile] * count, [options.webp] * count]
    entries, pixels = [], {}
    with ExitStack() as stack:
        results = worker_map(retile_shard, columns, options.workers, stack)
        for entry, shard_pixels in tqdm(results, total=count, desc=f"retile {out.name}",
                                        unit="shard", disable=not options.progress):
            entries.append(ShardEntry(**entry))
            pixels.update(shard_pixels)
    source = shards.manifest
    recipe = {"tile": options.tile, "codec": "zlib-rows", "formats": list(tiled_formats(options.webp)),
              "source_manifest_sha256": shards.manifest.sha256,
              "source_plan_sha256": source.plan_sha256}
    manifest = build_manifest(
        source.annotations, {**source.options, RETILE_KEY: {**recipe, "pixels_sha256": pixels}},
        entries, source.skipped,
        hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest())
    storage.write_bytes(out / MANIFEST_NAME, manifest.to_json().encode())
    return manifest
