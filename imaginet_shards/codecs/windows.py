"""Window decoding: the pixels of a crop, decoding as little of the image as each format allows.

`decode_window` serves JPEG (`codecs.jpeg`), PNG (`codecs.png`), WebP (`codecs.webp`) and the tiled
layout's `.tiles` members (`codecs.tiles`, which nothing else can decode), and returns None for the
rare images outside the fast paths. Both loaders crop PNG, WebP and tiles through it, the CPU
backend JPEG too (DALI decodes JPEG windows with its own decoder, on the GPU where it has one), so
they decode the same pixels, which are exactly those of a full decode.
"""
from __future__ import annotations

import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from imaginet_shards.codecs import jpeg as jpeg_window
from imaginet_shards.codecs import png as png_window
from imaginet_shards.codecs import tiles as tiles_window
from imaginet_shards.codecs import webp as webp_window
from imaginet_shards.format.images import sniff_format
from imaginet_shards.format.tiles import TiledImage

_DECODERS = {"jpeg": jpeg_window.decode_window, "png": png_window.decode_window,
             "webp": webp_window.decode_window, "tiles": tiles_window.decode_window}
# The formats DALI's pipeline hands to `WindowDecoder`: its own decoder crops JPEGs.
DALI_FORMATS = frozenset({"png", "webp", "tiles"})


def decode_window(data, top: int, left: int, height: int, width: int,
                  formats: Collection[str] = frozenset(_DECODERS)) -> np.ndarray | None:
    """RGB uint8 (height, width, 3) of the window of `data` (encoded bytes, or a `TiledImage` left
    in its shard), or None when the format is not in `formats` or the image is outside its decoder's
    fast path; ValueError for corrupt data or a window outside the image."""
    fmt = "tiles" if isinstance(data, TiledImage) else sniff_format(bytes(memoryview(data)[:12]))
    decoder = _DECODERS.get(fmt or "") if fmt in formats else None
    return None if decoder is None else decoder(data, top, left, height, width)


class WindowDecoder:
    """Batch form of `decode_window` for DALI's `python_function`: decodes a batch on `threads`
    threads (the decoders release the GIL) and flags each sample it decoded. The others (JPEG,
    images outside the fast paths, corrupt images) come back empty and False, for the pipeline's
    own decoder, which then reports corrupt data as it always does.

    `tiled`: the shard set holds `.tiles` members (the tiled layout), which only this decoder
    reads: DALI's graph then takes every image's shape from the feed (the loader reads it from the
    header it checks) and decodes every window, whole images included, through this decoder
    first."""

    def __init__(self, threads: int, tiled: bool = False):
        self.threads = max(int(threads), 1)
        self.tiled = tiled
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def _executor(self) -> ThreadPoolExecutor:
        """This decoder's pool, started on first use; a forked copy starts its own (threads do not
        survive a fork)."""
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(self.threads, "imaginet-window"), os.getpid()
        return self._pool

    def close(self) -> None:
        """Stop the pool's threads (a later call starts a new pool)."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._pool = None

    @staticmethod
    def _one(data: np.ndarray, start: np.ndarray, shape: np.ndarray) -> np.ndarray | None:
        try:
            return decode_window(data, int(start[0]), int(start[1]), int(shape[0]), int(shape[1]),
                                 DALI_FORMATS)
        except ValueError:
            return None

    def __call__(self, encoded: list[np.ndarray], starts: list[np.ndarray],
                 shapes: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first
        decoded = self._executor().map(self._one, *([column[i] for i in order]
                                                     for column in (encoded, starts, shapes)))
        images: list[np.ndarray | None] = [None] * len(encoded)
        for i, image in zip(order, decoded):
            images[i] = image
        empty = np.zeros((0, 0, 3), dtype=np.uint8)
        return ([empty if image is None else image for image in images],
                [np.array(image is not None) for image in images])
