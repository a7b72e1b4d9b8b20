"""`loaders.ahead.Ahead`: an iterator run on a thread of its own, a few items ahead."""
from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from imaginet_shards.loaders.ahead import Ahead


def test_items_come_in_order_from_another_thread():
    threads: list[str] = []

    def source() -> Iterator[int]:
        for i in range(20):
            threads.append(threading.current_thread().name)
            yield i
    assert list(Ahead(source(), depth=3, name="producer")) == list(range(20))
    assert set(threads) == {"producer"}


def test_an_error_is_raised_where_its_item_would_have_come():
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad sample")
    ahead = Ahead(source(), depth=4)
    assert next(ahead) == 1 and next(ahead) == 2
    with pytest.raises(ValueError, match="bad sample"):
        next(ahead)
    with pytest.raises(StopIteration):
        next(ahead)


def test_close_stops_a_blocked_producer_discards_its_items_and_closes_the_source():
    closed, discarded, made = [], [], []

    def source() -> Iterator[int]:
        try:
            for i in range(1000):
                made.append(i)
                yield i
        finally:
            closed.append(True)
    ahead = Ahead(source(), depth=2, discard=discarded.append)
    assert next(ahead) == 0
    deadline = time.monotonic() + 10
    while len(made) < 4 and time.monotonic() < deadline:  # two queued, one waiting to be
        time.sleep(0.01)
    ahead.close()
    assert closed == [True] and not ahead._thread.is_alive()
    assert sorted(discarded) == made[1:] and len(made) < 10  # all made but the taken one, no more
    with pytest.raises(StopIteration):
        next(ahead)


def test_a_raised_error_leaves_no_reference_cycle():
    """The consumer's frames (which hold a DALI pipeline in the loader) are freed with the error,
    not left to the garbage collector (a forked child's collector could hang finalising one)."""
    def source() -> Iterator[int]:
        raise ValueError("at once")
        yield 0

    def consume() -> weakref.ref:
        ahead = Ahead(source())
        try:
            next(ahead)
        except ValueError:
            pass
        ahead._thread.join()
        return weakref.ref(ahead)
    gc.disable()
    try:
        assert consume()() is None
    finally:
        gc.enable()
