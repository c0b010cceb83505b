"""Shared pieces of io: ReadError, identifier scrubbing, source digests and file-safe names."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAX_PIXELS_2D = 8192 * 8192  # larger 2D planes are refused; tile or downsample them first

# UIDs (dotted digit strings) and 8-digit dates may come from DICOM headers via library errors.
_UID_RE = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_DATE_RE = re.compile(r"\b(?:19|20)\d{6}\b")


class ReadError(ValueError):
    """A source could not be read; the message says what is wrong and how to fix it.

    Messages never carry patient identifiers (names, IDs, UIDs, dates); paths given by the user
    may appear.
    """


def scrub_identifiers(text: object, limit: int = 160) -> str:
    """Make a library error message safe to show: no UIDs or dates, one short line.

    Args:
        text: an exception or message.
        limit: maximum length of the result.

    Returns:
        The scrubbed single-line message.
    """
    msg = " ".join(str(text).split())
    msg = _DATE_RE.sub("<date>", _UID_RE.sub("<uid>", msg))
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def concept_slug(phrase: str) -> str:
    """File-safe name of a concept: its label array in a Zarr store and its mask files.

    Lower case, spaces as underscores, other unsafe characters dropped ("concept" if none left).
    """
    slug = "_".join(phrase.lower().split())
    return "".join(ch for ch in slug if ch.isalnum() or ch in "_-") or "concept"


def bytes_digest(data: bytes) -> str:
    """Return the sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path, block: int = 1 << 22) -> str:
    """Return the sha256 hex digest of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def combine_digests(digests: Iterable[str]) -> str:
    """Combine per-file digests into one source digest, independent of file names and order.

    Args:
        digests: sha256 hex digests of the source files' bytes.

    Returns:
        sha256 hex digest over the sorted per-file digests (a single file's digest unchanged).
    """
    items = sorted(digests)
    if len(items) == 1:
        return items[0]
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise ReadError when a floating-point array holds NaN (or infinite) values.

    Args:
        array: voxels of any shape.
        what: the source, as the user named it (used in the message).
    """
    if array.dtype.kind not in "fc":
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    if n_nan or n_inf:
        raise ReadError(
            f"{what}: {n_nan} NaN and {n_inf} infinite voxels out of {array.size}; "
            "fill them (e.g. with the background value) before ingesting"
        )


def check_exists(path: Path) -> None:
    """Raise ReadError for a missing path or an empty file."""
    if not path.exists():
        raise ReadError(f"{path} does not exist; check the path (cohort table 'path' column)")
    if path.is_file() and path.stat().st_size == 0:
        raise ReadError(f"{path} is an empty file (0 bytes); re-export or remove it")
