"""Reading ahead: load the next items of a sequence in a background thread.

A shard segments its studies one after the other; reading a study's store (decompression
releases the GIL) can overlap with segmenting the previous one. :func:`prefetch` yields each
item with the outcome of loading it, in order, while a single thread loads at most ``ahead``
items beyond the one the consumer holds, so memory stays bounded. A load that fails does not
stop the others: its exception travels with its item and is raised where the consumer asks
for the value, as if it had loaded the item itself.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_POLL_S = 0.1  # how often a blocked loader checks whether the consumer has stopped


@dataclass(frozen=True)
class Fetched(Generic[T, R]):
    """One item and the outcome of loading it: a value or the exception it raised."""

    item: T
    value: R | None = None
    error: BaseException | None = None

    def get(self) -> R:
        """The loaded value; raises the load's exception (with its traceback) if it failed."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(frozen=True)
class _End:
    """The loader's last message: all items loaded, or iterating the items failed."""

    error: BaseException | None = None


def prefetch(items: Iterable[T], load: Callable[[T], R], ahead: int = 1) -> Iterator[Fetched[T, R]]:
    """Yield ``Fetched(item, load(item))`` for each item, in order, loading ahead in a thread.

    Use it under ``contextlib.closing`` (or exhaust it): closing the iterator early stops
    the thread and waits for the load under way.

    Args:
        items: the items, in the order they are wanted.
        load: reads one item; any exception it raises is kept for that item.
        ahead: how many items may be loaded and not yet handed over (>= 1).

    Returns:
        An iterator of Fetched records, one per item, in the order of ``items``.

    Raises:
        ValueError: ``ahead`` < 1 (on the first ``next``). Any error of iterating ``items``,
            after the items before it.
    """
    if ahead < 1:
        raise ValueError(f"prefetch ahead={ahead}: load at least one item ahead")
    slots, stop, ready = threading.Semaphore(ahead), threading.Event(), queue.Queue()
    worker = threading.Thread(
        target=_load_all, args=(items, load, slots, stop, ready), name="prefetch", daemon=True
    )
    worker.start()
    try:
        while not isinstance(fetched := ready.get(), _End):
            slots.release()  # the consumer holds this one: the loader may start the next
            yield fetched
        if fetched.error is not None:
            raise fetched.error
    finally:
        stop.set()
        slots.release()  # wake a loader waiting for a slot, so it sees ``stop``
        worker.join()


def _load_all(
    items: Iterable, load: Callable, slots: threading.Semaphore, stop: threading.Event, ready
) -> None:
    """The loader thread: load each item once a slot is free, until done or stopped."""
    end = _End()
    try:
        for item in items:
            while not slots.acquire(timeout=_POLL_S):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            try:
                ready.put(Fetched(item, value=load(item)))
            except BaseException as exc:  # noqa: BLE001 - delivered to the consumer with its item
                ready.put(Fetched(item, error=exc))
    except BaseException as exc:  # noqa: BLE001 - iterating ``items`` failed: the consumer raises
        end = _End(exc)
    finally:
        ready.put(end)
