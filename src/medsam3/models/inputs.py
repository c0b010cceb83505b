"""Input checks shared by every backend: one clear error per kind of bad input."""

from __future__ import annotations

import numpy as np

from medsam3.io.common import MAX_PIXELS_2D
from medsam3.types import Kind


class InputError(ValueError):
    """Bad input to a segmenter; the message says what was wrong and how to fix it."""


def infer_kind(array: np.ndarray, kind: Kind | None = None) -> Kind:
    """Infer image / volume / video from the array shape when ``kind`` is None.

    Args:
        array: (y, x), (y, x, 3|4) -> image; (z, y, x) -> volume; (t, y, x, 3|4) -> video.
        kind: explicit kind, returned unchanged after a shape check.

    Returns:
        The kind.
    """
    if kind is not None:
        if kind not in ("image", "volume", "video"):
            raise InputError(f"kind must be image, volume or video, got {kind!r}")
        return kind
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return "image"
    if array.ndim == 3:
        return "volume"
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        return "video"
    raise InputError(
        f"cannot interpret an array of shape {array.shape}: expected (y, x), (y, x, 3), "
        "(z, y, x) or (t, y, x, 3); pass kind= to disambiguate"
    )


def check_array(array: np.ndarray, kind: Kind) -> np.ndarray:
    """Validate pixels and channels; NaN/inf become the finite minimum (documented behaviour).

    Args:
        array: input array of the given kind.
        kind: "image", "volume" or "video".

    Returns:
        A float32 copy with non-finite values replaced, or the array itself when already clean.
    """
    array = np.asarray(array)
    if array.size == 0:
        raise InputError(f"empty input array of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"pixel dtype {array.dtype} is not numeric")
    spatial = 2 if kind == "image" else 3
    if array.ndim == spatial + 1 and array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"{kind} has {array.shape[-1]} channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA)"
        )
    if array.ndim not in (spatial, spatial + 1):
        raise InputError(f"a {kind} needs {spatial} spatial axes, got shape {array.shape}")
    ys, xs = (array.shape[0], array.shape[1]) if kind == "image" else array.shape[1:3]
    if ys * xs > MAX_PIXELS_2D:
        raise InputError(
            f"{kind} plane of {ys}x{xs} pixels exceeds the {MAX_PIXELS_2D} pixel limit; "
            "downsample or tile it before segmenting"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        finite = array[np.isfinite(array)]
        fill = float(finite.min()) if finite.size else 0.0
        array = np.where(np.isfinite(array), array, fill).astype(np.float32)
    return array


def check_concepts(concepts: list[str] | str) -> list[str]:
    """Normalise the phrase list: strip whitespace, refuse empty phrases and duplicates.

    Args:
        concepts: a phrase or list of phrases.

    Returns:
        The stripped phrases in order.
    """
    if isinstance(concepts, str):
        concepts = [concepts]
    out: list[str] = []
    for i, phrase in enumerate(concepts):
        if not isinstance(phrase, str) or not phrase.strip():
            raise InputError(
                f"concept #{i} is empty or not text ({phrase!r}); give a phrase like 'liver'"
            )
        phrase = " ".join(phrase.split())
        if phrase in out:
            raise InputError(f"concept {phrase!r} is listed twice")
        out.append(phrase)
    if not out:
        raise InputError("no concepts given; pass at least one phrase, e.g. concepts=['liver']")
    return out
