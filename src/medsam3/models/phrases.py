"""Phrases -> the vectors that condition the compact head.

A phrase is first mapped to a vocabulary concept where it names one:
- an exact name or listed synonym (case, spaces and underscores ignored) -> its concept, so a
  synonym and its concept give the same vector, hence the same mask;
- a near-miss spelling of one name or synonym (one edit for names up to 8 letters, two beyond:
  "lugn" -> "lung", "pancraes" -> "pancreas") -> that concept, logged once;
- anything else keeps its own MiniLM embedding (a new concept, or another wording).

A known concept with a ``parent`` (a subtype with no training masks of its own) is conditioned
on the normalised mean of its own and its parent's embeddings.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from medsam3.models.concepts import _lookup, _norm, parent_of, resolve
from medsam3.models.text_encoder import TextEncoder, shared_text_encoder

log = logging.getLogger("medsam3.phrases")
_NOTED: set[str] = set()


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap neighbours), or
    ``limit + 1`` as soon as it is certain to exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = [], list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


@lru_cache(maxsize=4096)
def correct_spelling(phrase: str) -> str | None:
    """The concept whose name or synonym is a near-miss spelling of the phrase, else None.

    Accepted only when exactly one concept is that close (so "l6 vertebra", one edit from
    every lumbar vertebra, is left alone).
    """
    text = _norm(phrase)
    if len(text) < 4 or resolve(text):
        return None
    limit = 1 if len(text) <= 8 else 2
    hits = {
        concept for name, concept in _lookup().items() if edit_distance(text, name, limit) <= limit
    }
    return hits.pop() if len(hits) == 1 else None


def canonical(phrase: str) -> str | None:
    """The vocabulary concept a phrase names (exactly, by synonym or by a near-miss spelling),
    else None. A spelling correction is logged once per process."""
    exact = resolve(phrase)
    if exact:
        return exact
    fixed = correct_spelling(phrase)
    if fixed and phrase not in _NOTED:
        _NOTED.add(phrase)
        log.warning("%r read as the concept %r (a near-miss spelling)", phrase, fixed)
    return fixed


def condition(phrases: list[str], encoder: TextEncoder | None = None) -> np.ndarray:
    """Head conditioning vectors for phrases (see the module docstring).

    Args:
        phrases: n phrases.
        encoder: MiniLM encoder; the process-wide one when None.

    Returns:
        (n, 384) float32, unit L2 norm per row.
    """
    encoder = encoder or shared_text_encoder()
    names = [canonical(p) or p for p in phrases]
    own = encoder.encode(names)
    parents = [parent_of(n) if resolve(n) else None for n in names]
    if not any(parents):
        return own
    other = encoder.encode([q or n for n, q in zip(names, parents, strict=True)])
    mixed = own + other
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
