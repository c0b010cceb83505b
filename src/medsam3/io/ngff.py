"""OME-Zarr (NGFF 0.5) metadata and resolution pyramids for the study stores of ``zarr_store``.

A study store is an NGFF image: its root group holds ``ome.multiscales`` (axes with units and
one ``scale`` per level from the spacing) over the arrays ``0``, ``1``, ... and ``labels/``
holds one NGFF label image per concept (``ome.image-label`` with colours and per-instance
scores). The NGFF axes order is time, channel, space (z, y, x), so colour arrays are stored
channel first: (c, y, x) images and (t, c, y, x) videos; :func:`to_ngff` / :func:`from_ngff`
convert from / to medsam3's SimpleITK order ((y, x, c), (t, y, x, c)). Origin and direction
have no place in NGFF 0.5 (a scale and a translation only): they stay in medsam3's own
root attributes.

Levels: level k halves y and x k times (2 x 2 block mean for images, block maximum for label
ids, so thin structures stay visible), while the plane's longer side exceeds ``PYRAMID_SIDE``
pixels, up to ``MAX_LEVELS`` levels. Level k's transform is scale ``s * 2**k`` and translation
``s * (2**k - 1) / 2`` on y and x (the block centres).
"""

from __future__ import annotations

import hashlib

import numpy as np

NGFF_VERSION = "0.5"
PYRAMID_SIDE = 512  # a plane whose longer side exceeds this gets a coarser level
MAX_LEVELS = 5
# A qualitative palette (RGB, uint8) for instance ids; a concept starts at its own offset.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
)  # fmt: skip
MAX_LABEL_ENTRIES = 1024  # colours/properties listed per label (viewers pick the rest)


def axis_names(kind: str, rgb: bool) -> tuple[str, ...]:
    """NGFF axis names of a stored array: ("y", "x"), ("c", "y", "x"), ("z", "y", "x"),
    ("t", "y", "x") or ("t", "c", "y", "x")."""
    spatial = {"image": ("y", "x"), "volume": ("z", "y", "x"), "video": ("t", "y", "x")}[kind]
    if not rgb:
        return spatial
    return ("c", "y", "x") if kind == "image" else ("t", "c", "y", "x")


def axes(kind: str, rgb: bool, physical: bool, frame_rate: float | None) -> list[dict]:
    """NGFF ``axes`` of a stored array.

    Args:
        kind: "image", "volume" or "video".
        rgb: the array has a colour channel axis.
        physical: the spacing is in millimetres (else the space axes carry no unit).
        frame_rate: frames per second of a video (its time axis is in seconds when known).

    Returns:
        One ``{"name", "type"[, "unit"]}`` per axis, in :func:`axis_names` order.
    """
    out = []
    for name in axis_names(kind, rgb):
        if name == "c":
            out.append({"name": "c", "type": "channel"})
        elif name == "t":
            out.append({"name": "t", "type": "time"} | ({"unit": "second"} if frame_rate else {}))
        else:
            unit = {"unit": "millimeter"} if physical else {}
            out.append({"name": name, "type": "space"} | unit)
    return out


def axis_scale(
    kind: str, rgb: bool, spacing: tuple[float, ...], frame_rate: float | None
) -> list[float]:
    """Level-0 scale per NGFF axis: spacing (SimpleITK x, y[, z] order) reordered to z, y, x;
    1 / frame rate (or 1) for time; 1 for channels."""
    sp = [float(s) for s in spacing]
    values = {"x": sp[0], "y": sp[1], "z": sp[2] if len(sp) > 2 else 1.0, "c": 1.0}
    values["t"] = 1.0 / frame_rate if frame_rate else 1.0
    return [values[n] for n in axis_names(kind, rgb)]


def n_levels(shape_yx: tuple[int, int]) -> int:
    """Levels of the pyramid of a plane of ``shape_yx`` (1: no coarser level)."""
    y, x, levels = int(shape_yx[0]), int(shape_yx[1]), 1
    while max(y, x) > PYRAMID_SIDE and levels < MAX_LEVELS:
        y, x, levels = -(-y // 2), -(-x // 2), levels + 1
    return levels


def downsample(array: np.ndarray, labels: bool = False) -> np.ndarray:
    """Halve the last two axes (y, x): 2 x 2 block mean (images) or block maximum (label ids).

    Odd sizes are padded by repeating the edge, so the result is ceil(n / 2) long.

    Args:
        array: any array whose last two axes are y and x (NGFF order).
        labels: take the block maximum (ids stay ids) instead of the mean.

    Returns:
        The halved array, same dtype (means rounded for integer dtypes).
    """
    y, x = array.shape[-2:]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, y % 2), (0, x % 2)]
    padded = np.pad(array, pad, mode="edge") if (y % 2 or x % 2) else array
    blocks = padded.reshape(*padded.shape[:-2], padded.shape[-2] // 2, 2, padded.shape[-1] // 2, 2)
    if labels:
        return blocks.max(axis=(-3, -1))
    mean = blocks.mean(axis=(-3, -1), dtype=np.float64)
    if array.dtype.kind in "iub":
        mean = np.rint(mean)
    return mean.astype(array.dtype)


def pyramid(array: np.ndarray, levels: int, labels: bool = False) -> list[np.ndarray]:
    """``levels`` arrays: ``array`` and its successive halvings (:func:`downsample`)."""
    out = [array]
    for _ in range(levels - 1):
        out.append(downsample(out[-1], labels))
    return out


def multiscales(name: str, axes_meta: list[dict], scale: list[float], levels: int) -> list[dict]:
    """The ``multiscales`` list of an NGFF image with datasets ``0`` .. ``levels - 1``.

    Args:
        name: the image's name (the study id, or the label's name).
        axes_meta: :func:`axes`.
        scale: level-0 scale per axis (:func:`axis_scale`).
        levels: number of levels.

    Returns:
        ``[{"name", "axes", "datasets"}]``; dataset k has scale ``s * 2**k`` on y and x and,
        for k > 0, the translation of the block centres.
    """
    names = [a["name"] for a in axes_meta]
    datasets = []
    for k in range(levels):
        factor = [2.0**k if n in ("y", "x") else 1.0 for n in names]
        level_scale = [s * f for s, f in zip(scale, factor, strict=True)]
        transforms = [{"type": "scale", "scale": level_scale}]
        if k:
            shift = [s * (f - 1) / 2 for s, f in zip(scale, factor, strict=True)]
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    return [{"name": name, "axes": axes_meta, "datasets": datasets}]


def to_ngff(array: np.ndarray, kind: str, rgb: bool) -> np.ndarray:
    """An array in SimpleITK order as stored: the channel axis moved before y and x."""
    return np.moveaxis(array, -1, -3) if rgb else array


def from_ngff(array: np.ndarray, kind: str, rgb: bool) -> np.ndarray:
    """A stored array back in SimpleITK order (channel axis last)."""
    return np.moveaxis(array, -3, -1) if rgb else array


def label_metadata(name: str, n_ids: int, scores: list[float] | None = None) -> dict:
    """The ``image-label`` metadata of a concept's label image.

    Args:
        name: the label's name (its colours start at an offset derived from it).
        n_ids: the highest instance id (ids are 1..n_ids, 0 is background).
        scores: per-instance scores, ``scores[k - 1]`` for id k (listed as properties).

    Returns:
        ``{"version", "colors", "properties", "source"}`` with at most ``MAX_LABEL_ENTRIES``
        colours and properties; RGBA values are uint8.
    """
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(PALETTE)
    ids = range(1, min(n_ids, MAX_LABEL_ENTRIES) + 1)
    colors = [
        {"label-value": k, "rgba": [*PALETTE[(start + k - 1) % len(PALETTE)], 255]} for k in ids
    ]
    properties = [
        {"label-value": k, "score": float(scores[k - 1])}
        for k in ids
        if scores is not None and k <= len(scores)
    ]
    meta = {"version": NGFF_VERSION, "colors": colors, "source": {"image": "../../"}}
    if properties:
        meta["properties"] = properties
    return meta
