"""`retile`: the tiled training layout, a shard set derived from another in which each PNG image
(and, with `webp`/`jpeg`, each WebP/JPEG image, decoded once) is stored as independently decodable
tiles in one `{key}.tiles` member (`format.tiles`, `codecs.tiles`; "zstd-rows" tiles unless asked
for another codec), so that a random crop inflates only the tiles that cover it. The formats not
tiled keep their bytes and their `.json` unchanged.
Tiling a lossy image trades bytes (lossless pixels) for the CPU its window decoder spends on every
crop (libjpeg-turbo entropy-decodes every row above a JPEG crop).

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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imaginet_shards.augment.cpu import decode
from imaginet_shards.codecs.tiles import DEFAULT_CODEC, encode_tiles, pixels_sha256
from imaginet_shards.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardEntry,
    build_manifest,
)
from imaginet_shards.format.members import encode_members, label_members
from imaginet_shards.format.tiles import CODEC_IDS, RETILE_KEY, check_tile_size
from imaginet_shards.io import storage
from imaginet_shards.io.shardset import Record, ShardSet, open_shard_set
from imaginet_shards.ops.perturb import Labels, Members, prepare_destination, rewrite_shard, worker_map


@dataclass(frozen=True)
class RetileOptions:
    """What `retile` does: `source` (a shard set directory, manifest path or URL) to the local
    directory `out`, with `tile`-pixel tiles stored with `codec` (a name in
    `format.tiles.TILE_CODECS`), WebP images tiled too when `webp`, JPEG images when `jpeg`, in
    `workers` processes (1: in this process)."""

    source: str
    out: Path
    tile: int = 128
    codec: str = DEFAULT_CODEC
    webp: bool = False
    jpeg: bool = False
    workers: int = 1
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_tile_size(self.tile)
        if self.codec not in CODEC_IDS:
            raise ValueError(f"unknown tile codec {self.codec!r}, expected one of {sorted(CODEC_IDS)}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def tiled_formats(webp: bool, jpeg: bool) -> tuple[str, ...]:
    """The image members (extensions) `retile` tiles."""
    return ("png", *(("webp",) if webp else ()), *(("jpg",) if jpeg else ()))


def tile_image(data: bytes, tile: int, codec: str = DEFAULT_CODEC) -> tuple[bytes, str, int, int]:
    """(`.tiles` member, sha256 of the decoded pixels, height, width) of one source image."""
    pixels = decode(data).permute(1, 2, 0).numpy()
    return encode_tiles(pixels, tile, codec), pixels_sha256(pixels), pixels.shape[0], pixels.shape[1]


def retile_shard(shards: ShardSet, number: int, out: str, tile: int, formats: tuple[str, ...],
                 codec: str = DEFAULT_CODEC) -> tuple[dict, dict[str, str]]:
    """Write the tiled copy of shard `number` (see `perturb.rewrite_shard`); return its manifest
    entry as a dict and {key: pixels sha256} of the images it tiled (those whose member extension
    is in `formats`). Runs in a worker."""
    pixels: dict[str, str] = {}

    def tiled(record: Record, labels: Labels) -> Members:
        if record.image_ext not in formats:
            return [(record.image_ext, record.image), *label_members(labels), ("json", record.meta)]
        data, digest, height, width = tile_image(record.image, tile, codec)
        meta = json.loads(record.meta)
        meta["source"] = {"format": meta.get("format"), "bytes": len(record.image),
                          "sha256": hashlib.sha256(record.image).hexdigest()}
        meta.update(height=height, width=width, tile=tile)
        pixels[record.key] = digest
        return encode_members(record.key, data, "tiles", labels, meta)

    return rewrite_shard(shards, number, out, tiled), pixels


def retile(options: RetileOptions) -> Manifest:
    """Write the tiled shard set at options.out (manifest.json last) and return its manifest."""
    shards = open_shard_set(options.source)
    out = prepare_destination(options.out, shards, options.overwrite)
    count = len(shards.manifest.shards)
    formats = tiled_formats(options.webp, options.jpeg)
    columns: list[list[Any]] = [[shards] * count, list(range(count)), [str(out)] * count,
                                [options.tile] * count, [formats] * count, [options.codec] * count]
    entries, pixels = [], {}
    with ExitStack() as stack:
        results = worker_map(retile_shard, columns, options.workers, stack)
        for entry, shard_pixels in tqdm(results, total=count, desc=f"retile {out.name}",
                                        unit="shard", disable=not options.progress):
            entries.append(ShardEntry(**entry))
            pixels.update(shard_pixels)
    source = shards.manifest
    recipe = {"tile": options.tile, "codec": options.codec, "formats": list(formats),
              "source_manifest_sha256": shards.manifest.sha256,
              "source_plan_sha256": source.plan_sha256}
    manifest = build_manifest(
        source.annotations, {**source.options, RETILE_KEY: {**recipe, "pixels_sha256": pixels}},
        entries, source.skipped,
        hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest())
    storage.write_bytes(out / MANIFEST_NAME, manifest.to_json().encode())
    return manifest
