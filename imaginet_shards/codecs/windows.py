"""Window decoding: the pixels of a crop, decoding as little of the image as each format allows.

`decode_window` serves JPEG (`codecs.jpeg`), PNG (`codecs.png`), WebP (`codecs.webp`) and the tiled
layout's `.tiles` members (`codecs.tiles`, which nothing else can decode), and returns None for the
rare images outside the fast paths. Both loaders crop PNG, WebP and tiles through it, the CPU
backend JPEG too (DALI decodes JPEG windows with its own decoder, on the GPU where it has one, but
on a tiled set), so they decode the same pixels, which are exactly those of a full decode.
`decode_mirrored` also serves windows that reach past the image, mirrored as padding would.
"""
from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from queue import Empty, SimpleQueue

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
_TICKET = b"IMTICKET"  # `WindowDecoder.lend`'s stand-in for a TiledImage: these 8 bytes, then its number


def decode_window(data, top: int, left: int, height: int, width: int,
                  formats: Collection[str] = frozenset(_DECODERS)) -> np.ndarray | None:
    """RGB uint8 (height, width, 3) of the window of `data` (encoded bytes, or a `TiledImage` left
    in its shard), or None when the format is not in `formats` or the image is outside its decoder's
    fast path; ValueError for corrupt data or a window outside the image."""
    fmt = "tiles" if isinstance(data, TiledImage) else sniff_format(bytes(memoryview(data)[:12]))
    decoder = _DECODERS.get(fmt or "") if fmt in formats else None
    return None if decoder is None else decoder(data, top, left, height, width)


def decode_whole(data) -> np.ndarray:
    """The whole image as RGB uint8 (H, W, 3) through OpenCV, as the reference reads images
    (`cv2.imread`): grey and palette expanded, alpha dropped, 16 bits scaled to 8, EXIF
    orientation ignored (as the window decoders do); ValueError when OpenCV cannot decode it.
    OpenCV, not torchvision: importing torchvision.io costs every loader start seconds."""
    import cv2  # here: a fifth of a second to import, and only images outside the fast paths need it

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8),
                          cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        raise ValueError("corrupt image: OpenCV could not decode it")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def reflect_101(start: int, size: int, limit: int) -> np.ndarray:
    """The source positions of [start, start + size) over [0, `limit`) mirrored at its borders
    without repeating the edge, as far out as needed (OpenCV's BORDER_REFLECT_101, which repeats
    the one pixel of a side of 1)."""
    positions = np.arange(start, start + size)
    if limit == 1:
        return np.zeros_like(positions)
    period = 2 * (limit - 1)
    positions %= period
    return np.where(positions < limit, positions, period - positions)


def _span(start: int, size: int, limit: int) -> tuple[int, int, np.ndarray | None]:
    """Along one axis, [first, end) of the source positions the window [start, start + size)
    covers, mirrored (reflect-101) past [0, `limit`), and where in that range each of its
    positions lies (None for a window inside the source: all of it, in order)."""
    if 0 <= start and start + size <= limit:
        return start, start + size, None
    positions = reflect_101(start, size, limit)
    first = int(positions.min())
    return first, int(positions.max()) + 1, positions - first


def decode_mirrored(data, top: int, left: int, height: int, width: int,
                    image_size: tuple[int, int], formats: Collection[str] = frozenset(_DECODERS),
                    whole: bool = False) -> np.ndarray | None:
    """`decode_window` of a window that may reach past the `image_size` (height, width) image,
    mirrored there (reflect-101): what padding the whole image, then cropping, gives. Only the
    rows and columns the mirrored window covers are decoded; with `whole`, images outside the
    fast paths decode whole (`decode_whole`) instead of giving None."""
    row0, row1, rows = _span(top, height, image_size[0])
    col0, col1, cols = _span(left, width, image_size[1])
    inner = decode_window(data, row0, col0, row1 - row0, col1 - col0, formats)
    if inner is None and whole:
        pixels = decode_whole(data)
        if pixels.shape[:2] != image_size:
            raise ValueError(f"OpenCV decoded {pixels.shape[1]}x{pixels.shape[0]} pixels, the "
                             f"header says {image_size[1]}x{image_size[0]}")
        inner = pixels[row0:row1, col0:col1]
    if inner is not None and rows is not None:
        inner = inner[rows]
    if inner is not None and cols is not None:
        inner = inner[:, cols]
    return inner


class WindowDecoder:
    """Batch form of `decode_mirrored` for DALI's `python_function`: decodes a batch on `threads`
    threads (the decoders release the GIL) and flags each sample it decoded. The others (JPEG,
    images outside the fast paths, corrupt images) come back empty and False, for the pipeline's
    own decoder, which then reports corrupt data as it always does.

    `tiled`: the shard set holds `.tiles` members (the tiled layout), which only this decoder
    reads: DALI's graph then takes every image's shape from the feed (the loader reads it from the
    header it checks) and decodes every image of the set through this decoder, whatever its format
    (JPEG too, images outside the fast paths whole), mirrored past its borders, so that the graph
    needs no decoder or mirroring operators of its own; a corrupt image raises its ValueError.
    A `TiledImage` left in its shard travels through DALI as a ticket (`lend`), so that only the
    tiles a window covers are ever read. `decode` serves a loader that decodes its windows
    before DALI (a tiled set whose preset starts by cutting one), on the same threads."""

    def __init__(self, threads: int, tiled: bool = False):
        self.threads = max(int(threads), 1)
        self.tiled = tiled
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lent: weakref.WeakValueDictionary[int, TiledImage] = weakref.WeakValueDictionary()
        self._numbers = itertools.count()

    def lend(self, image: TiledImage) -> np.ndarray:
        """A small array standing for `image` in DALI's input (tiled decoders only): this decoder
        reads the image's tiles from its shard when a window of the ticket is asked for, as long
        as the caller keeps `image` alive (only a weak reference is kept here)."""
        if not self.tiled:
            raise ValueError("only a tiled decoder takes TiledImages")
        number = next(self._numbers)
        self._lent[number] = image
        return np.frombuffer(_TICKET + number.to_bytes(8, "little"), dtype=np.uint8)

    def _lent_image(self, data: np.ndarray) -> np.ndarray | TiledImage:
        """The TiledImage a ticket stands for, or `data` itself when it is no ticket."""
        if len(data) != len(_TICKET) + 8 or data[:len(_TICKET)].tobytes() != _TICKET:
            return data
        image = self._lent.get(int.from_bytes(data[len(_TICKET):].tobytes(), "little"))
        if image is None:
            raise ValueError("a lent tiled image was let go before DALI decoded it")
        return image

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

    def _one(self, data: np.ndarray, start: np.ndarray, shape: np.ndarray, size: np.ndarray
             ) -> np.ndarray | None:
        window = (int(start[0]), int(start[1]), int(shape[0]), int(shape[1]),
                  (int(size[0]), int(size[1])))
        if self.tiled:
            return decode_mirrored(self._lent_image(data), *window, whole=True)
        try:
            return decode_mirrored(data, *window, formats=DALI_FORMATS)
        except ValueError:
            return None

    def _each(self, order: Iterable[int], work: Callable[[int], None]) -> None:
        """`work(i)` for each i of `order` on the pool's threads (a task per thread, each taking
        the next i in turn), returning, or raising a task's error, only once all of them are done:
        none may still read the caller's inputs afterwards."""
        queue: SimpleQueue[int] = SimpleQueue()
        for i in order:
            queue.put(i)

        def task() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except Empty:
                    return
                work(i)

        # Only the pool's threads decode: called on DALI's own thread, nvImageCodec's decoder
        # was seen to hang for good, waiting for the GIL inside its decode call.
        tasks = [self._executor().submit(task) for _ in range(min(self.threads, queue.qsize()))]
        wait(tasks)
        for done in tasks:
            done.result()  # a task's error

    def decode(self, images: Sequence[bytes | TiledImage], windows: Sequence[tuple[int, int, int, int]],
               sizes: Sequence[tuple[int, int]]) -> list[np.ndarray | ValueError]:
        """For each image of (height, width) `sizes`, the pixels of its window (top, left, height,
        width; mirrored past its borders, as `decode_mirrored`, images outside the fast paths
        decoded whole first) in a C-contiguous array, or the ValueError saying why it could not
        be decoded."""
        out: list[np.ndarray | ValueError] = [ValueError("not decoded")] * len(images)

        def work(i: int) -> None:
            try:
                pixels = decode_mirrored(images[i], *windows[i], sizes[i], whole=True)
            except ValueError as exc:
                out[i] = exc
                return
            assert pixels is not None  # `whole`: never None
            out[i] = np.ascontiguousarray(pixels)
        self._each(range(len(images)), work)
        return out

    def __call__(self, encoded: list[np.ndarray], starts: list[np.ndarray],
                 shapes: list[np.ndarray], sizes: list[np.ndarray]
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(window, decoded?) per sample of the windows `starts` + `shapes` (rows, columns) of
        `encoded` images of `sizes` (height, width), mirrored where they reach past them."""
        images: list[np.ndarray | None] = [None] * len(encoded)

        def work(i: int) -> None:
            images[i] = self._one(encoded[i], starts[i], shapes[i], sizes[i])
        self._each(sorted(range(len(encoded)), key=lambda i: -len(encoded[i])), work)  # longest first
        empty = np.zeros((0, 0, 3), dtype=np.uint8)
        return ([empty if image is None else image for image in images],
                [np.array(image is not None) for image in images])
