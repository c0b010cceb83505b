"""io.prefetch: order kept, lookahead bounded, errors with their item, the thread stopped."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import pytest

from medsam3.io.prefetch import prefetch


class Recorder:
    """A load function that records which items it started, in which thread; optionally slow,
    and failing on chosen items."""

    def __init__(self, delay: float = 0.0, fail: frozenset = frozenset()) -> None:
        self.started: list[int] = []
        self.threads: set[threading.Thread] = set()
        self.delay, self.fail = delay, fail

    def __call__(self, item: int) -> int:
        self.started.append(item)
        self.threads.add(threading.current_thread())
        time.sleep(self.delay)
        if item in self.fail:
            raise ValueError(f"item {item} is broken")
        return item * item


def wait_for(condition, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_items_come_in_order_loaded_in_one_background_thread():
    load = Recorder()
    fetched = list(prefetch(range(20), load, ahead=2))
    assert [f.item for f in fetched] == list(range(20))
    assert [f.get() for f in fetched] == [k * k for k in range(20)]
    assert load.threads and threading.current_thread() not in load.threads
    assert not any(t.is_alive() for t in load.threads)


@pytest.mark.parametrize("ahead", [1, 2])
def test_lookahead_is_bounded(ahead):
    load = Recorder()
    with closing(prefetch(range(10), load, ahead=ahead)) as it:
        first = next(it)
        assert wait_for(lambda: len(load.started) == 1 + ahead)  # it does read ahead ...
        time.sleep(0.3)
        assert load.started == list(range(1 + ahead))  # ... but no further
        assert first.get() == 0
        second = next(it)
        assert wait_for(lambda: len(load.started) == 2 + ahead)
        time.sleep(0.3)
        assert len(load.started) == 2 + ahead and second.item == 1


def test_a_failed_load_is_raised_for_its_item_only():
    fetched = list(prefetch(range(6), Recorder(fail=frozenset({1, 4}))))
    assert [f.error is None for f in fetched] == [True, False, True, True, False, True]
    with pytest.raises(ValueError, match="item 4 is broken"):
        fetched[4].get()
    assert fetched[5].get() == 25


def test_stopping_early_stops_the_thread():
    load = Recorder(delay=0.05)
    with closing(prefetch(range(100), load, ahead=1)) as it:
        for fetched in it:
            if fetched.item == 2:
                break
    assert not any(t.is_alive() for t in load.threads)
    assert len(load.started) <= 4  # items 0..2 handed over, at most one more loaded
    stopped = len(load.started)
    time.sleep(0.2)
    assert len(load.started) == stopped


def test_a_consumer_error_stops_the_thread():
    load = Recorder()
    with pytest.raises(RuntimeError), closing(prefetch(range(100), load)) as it:
        for fetched in it:
            raise RuntimeError(f"consumer fails on {fetched.item}")
    assert not any(t.is_alive() for t in load.threads) and len(load.started) <= 2


def test_loading_overlaps_the_consumer():
    load = Recorder(delay=0.2)
    start = time.monotonic()
    for _ in prefetch(range(5), load):
        time.sleep(0.2)  # the consumer's work on the item
    assert time.monotonic() - start < 1.7  # one after the other: 2.0 s; overlapped: ~1.2 s


def test_a_failing_item_iterator_is_raised_after_its_items():
    def items():
        yield from (1, 2)
        raise OSError("listing failed")

    it = prefetch(items(), Recorder())
    assert [next(it).item, next(it).item] == [1, 2]
    with pytest.raises(OSError, match="listing failed"):
        next(it)


def test_ahead_must_be_positive():
    with pytest.raises(ValueError, match="at least one"):
        next(prefetch([1], Recorder(), ahead=0))
