"""Shared pieces of io: errors, identifier and path scrubbing, source digests, file-safe names."""

from __future__ import annotations

import errno
import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAX_PIXELS_2D = 8192 * 8192  # larger 2D planes are refused; tile or downsample them first

# UIDs (dotted digit strings) and dates (YYYYMMDD) may come from DICOM headers via library errors.
_UID_RE = re.compile(r"\b\d+(?:\.\d+){3,}\b")
_DATE_RE = re.compile(r"\b(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b")
# An absolute path in a message: from a "/" that does not follow a word character (so "1/2"
# and "and/or" are not paths) up to whitespace, a quote or a bracket.
_PATH_RE = re.compile(r"(?<![\w.~-])/[^\s'\"`,;()\[\]{}<>]+")
_HIDDEN = "<source>"

# errno values that say the machine, not the input, failed: full disk or quota, read-only or
# unwritable folder, I/O or network file system error, out of memory or file handles.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOMEM,
        errno.ESTALE,
        errno.EMFILE,
        errno.ENFILE,
    }
)


class ReadError(ValueError):
    """A source could not be read; the message says what is wrong and how to fix it.

    Messages never carry patient identifiers (names, IDs, UIDs, dates); paths given by the user
    may appear.
    """


class EnvironmentFailure(RuntimeError):
    """The machine failed a job (disk full, read-only or unwritable folder, I/O, memory).

    Not a property of the input: the job fails, so that Snakemake retries it and a rerun redoes
    it, instead of recording the study as failed.
    """


def environment_cause(exc: BaseException) -> BaseException | None:
    """The environment error behind an exception, if any.

    Follows the exception's cause chain (``raise ... from``, and the implicit context unless
    suppressed), since readers wrap library errors in :class:`ReadError`.

    Args:
        exc: any exception.

    Returns:
        The first exception in the chain that is an ``OSError`` whose errno is in
        ``ENVIRONMENT_ERRNOS``, a ``MemoryError`` (numpy's allocation failures included) or
        torch's out-of-memory error; None when the chain holds none (an input error).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or _is_torch_oom(current):
            return current
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            return current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return None


def _is_torch_oom(exc: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, or its CPU allocator's RuntimeError."""
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


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


def scrub_paths(text: str, known: Iterable[str] = (), keep: Iterable[str] = ()) -> str:
    """Replace whole path strings in a message; nothing else of it changes.

    Args:
        text: a message.
        known: paths to hide wherever they occur (a study's source and the files it lists),
            longest first; a path with spaces is only hidden whole when it is named here.
        keep: folders whose paths stay (the output folder: not patient data, and what a user
            needs to see to fix a full or read-only disk).

    Returns:
        The message with each known path, each path below a known one (``<source>/IM1.dcm``)
        and every other absolute path outside ``keep`` replaced by ``<source>``.
    """
    for path in sorted({p for p in known if p and p != "/"}, key=len, reverse=True):
        text = text.replace(path, _HIDDEN)
    text = re.sub(re.escape(_HIDDEN) + r"/[^\s'\"`,;()\[\]{}<>]*", _HIDDEN, text)
    roots = tuple(str(Path(k)).rstrip("/") + "/" for k in keep if k)

    def hide(match: re.Match) -> str:
        path = match.group(0)
        return path if roots and (path + "/").startswith(roots) else _HIDDEN

    return _PATH_RE.sub(hide, text)


SLUG_STEM = 48  # characters of a phrase's slug kept in its label name
_CLEAN_PHRASE = re.compile(r"^[a-z0-9]+(?:[ -][a-z0-9]+)*$")


def concept_slug(phrase: str) -> str:
    """File-safe name of a concept phrase: its label array in a Zarr store and its mask files.

    Distinct phrases always get distinct names, of at most 58 characters:

    - a phrase of lower-case ASCII letters and digits in words joined by single spaces or
      hyphens, of at most 48 characters, is its own name with spaces as underscores
      ("left kidney" -> ``left_kidney``, "t-cell" -> ``t-cell``);
    - any other phrase ("Lung", "lung!", "left_kidney", a 400-character phrase) is named by its
      slug (lower case, ASCII letters, digits, "_" and "-", at most 48 characters; "concept"
      when nothing is left) plus "--" and the first 8 hex digits of the sha256 of the exact
      phrase: "Lung" -> ``lung--<hash>``. The first kind never holds "--", so the two kinds
      cannot meet, and two phrases of the second kind share a name only if their hashes do.

    Args:
        phrase: the concept phrase as given.

    Returns:
        The name.
    """
    if _CLEAN_PHRASE.match(phrase) and len(phrase) <= SLUG_STEM:
        return phrase.replace(" ", "_")
    ascii_text = unicodedata.normalize("NFKD", phrase).encode("ascii", "ignore").decode()
    slug = "_".join(ascii_text.lower().split())
    slug = "".join(ch for ch in slug if ch.isalnum() or ch in "_-")
    slug = re.sub(r"[-_]{2,}", "_", slug).strip("-_")[:SLUG_STEM].strip("-_") or "concept"
    return f"{slug}--{hashlib.sha256(phrase.encode()).hexdigest()[:8]}"


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


def check_extent(image_shape: tuple[int, ...], spacing: Iterable[float], what: str) -> None:
    """Raise ReadError for an image without voxels or with unusable spacing.

    Args:
        image_shape: the spatial shape ((y, x) or (z|t, y, x)).
        spacing: SimpleITK (x, y[, z]) spacing.
        what: the source, as the user named it (used in the message).
    """
    if not image_shape or min(image_shape) == 0:
        raise ReadError(
            f"{what}: the image has no voxels (shape {tuple(image_shape)}); re-export it"
        )
    bad = [float(s) for s in spacing if not np.isfinite(s) or s <= 0]
    if bad:
        raise ReadError(
            f"{what}: voxel spacing {tuple(float(s) for s in spacing)} is not positive and "
            "finite; fix the header (pixdim / PixelSpacing) and re-export"
        )


def check_exists(path: Path) -> None:
    """Raise ReadError for a missing path or an empty file."""
    if not path.exists():
        raise ReadError(f"{path} does not exist; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise ReadError(f"{path} is an empty file (0 bytes); re-export or remove it")
