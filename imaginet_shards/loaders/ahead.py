"""Run an iterator on a thread of its own, a few items ahead of its consumer.

The DALI loader prepares each batch's feed (reading, header checks, the host's draws, a tiled
set's window decoding) on the host; done on the thread that iterates, that work would stall a
training loop between its steps. `Ahead` moves it to a background thread and hands the items over
in order, errors included, at the position where they were raised.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from queue import Empty, Full, Queue
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()  # the source is exhausted
_POLL = 0.05  # seconds between the producer's checks for `close` while the queue is full


class _Raised:
    """An error the source raised, handed over in its place."""

    def __init__(self, error: BaseException):
        self.error = error


class Ahead(Generic[T]):
    """The items of `source`, produced on a daemon thread up to `depth` ahead of `next()`. An
    error of the source is raised by the `next()` that would have returned its item. `close()`
    stops the thread, closes `source` (a generator) and passes every item produced but not taken
    to `discard` (e.g. releasing what it holds open); iterating after it ends the iteration."""

    def __init__(self, source: Iterator[T], depth: int = 1,
                 discard: Callable[[T], None] | None = None, name: str = "imaginet-ahead"):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._source, self._discard = source, discard
        self._queue: Queue[object] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, not swallowed
            self._put(_Raised(error))
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        """Queue `item` unless `close` comes first (then discard it): whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except Full:
                continue
        self._drop(item)
        return False

    def _drop(self, item: object) -> None:
        if self._discard is not None and not isinstance(item, _Raised) and item is not _DONE:
            self._discard(item)  # type: ignore[arg-type]

    def __iter__(self) -> Ahead[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # later calls end too
            raise StopIteration
        if isinstance(item, _Raised):
            self._queue.put(_DONE)
            error, item = item.error, None
            try:
                raise error
            finally:  # the traceback holds this frame: no cycle through it back to the error
                del error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop producing; discard what was produced and not taken; close the source."""
        self._stop.set()
        self._thread.join()
        while True:
            try:
                self._drop(self._queue.get_nowait())
            except Empty:
                break
        close = getattr(self._source, "close", None)
        if close is not None:
            close()
