"""Batches sized to the device's memory, halved and retried when the device runs out.

Backends encode many slices or frames; one forward pass over a batch keeps a GPU busy where
one pass per slice leaves it idle between kernel launches. The first batch size comes from
the free device memory and an estimate of one item's activation memory; an out-of-memory error
halves it (down to 1) and the batch is retried, so a wrong estimate costs one retry, not the
job. Every item is computed exactly once in the output order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
# A CPU runs one item per pass fastest: on 2 cores LiteMedSAM's encoder takes ~1.1x (float32)
# and ~1.6x (bfloat16) the time per plane four at a time (benchmarks/encoder.py).
CPU_BATCH = 1
MAX_BATCH = 64
MEMORY_SHARE = 0.6  # of the free device memory, for one batch's activations


def auto_batch_size(device: torch.device | str, item_bytes: int) -> int:
    """A first batch size for items of ``item_bytes`` activation memory each.

    Args:
        device: the torch device the batch runs on.
        item_bytes: estimated peak activation memory of one item, in bytes.

    Returns:
        On CUDA, the number of items that fit into 60% of the free memory (1..64); on any
        other device, 1 (CPU_BATCH).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(MAX_BATCH, int(free * MEMORY_SHARE) // max(1, item_bytes)))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, or an allocator's RuntimeError)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def in_batches(
    items: Sequence[T], fn: Callable[[Sequence[T]], R], batch: int, on_resize=None
) -> Iterator[tuple[int, int, R]]:
    """Apply ``fn`` to consecutive batches of ``items``, halving the batch on out-of-memory.

    Args:
        items: the inputs, in order.
        fn: computes one batch (a slice of items) and returns its result.
        batch: the first batch size (>= 1).
        on_resize: called with the new size after each halving (to remember it).

    Yields:
        (start, stop, fn(items[start:stop])) in order, covering every item once.

    Raises:
        The out-of-memory error when even a batch of one does not fit; any other error as is.
    """
    start, batch = 0, max(1, int(batch))
    while start < len(items):
        stop = min(len(items), start + batch)
        try:
            result = fn(items[start:stop])
        except Exception as exc:
            if batch == 1 or not is_out_of_memory(exc):
                raise
            del exc  # drop the traceback's references to the failed batch's tensors
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch = max(1, batch // 2)
            log.warning("out of device memory: batch size halved to %d", batch)
            if on_resize is not None:
                on_resize(batch)
            continue
        yield start, stop, result
        start = stop
