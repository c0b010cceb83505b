"""Segmentation and presence metrics, and ground-truth masks for evaluation.

Overlap metrics (Dice, IoU) are counted here; surface metrics come from MONAI:
normalised surface Dice (``compute_surface_dice`` with sub-voxel surface elements, i.e. the
Nikolov et al. 2021 definition) and the 95th-percentile symmetric Hausdorff distance
(``compute_hausdorff_distance(percentile=95)``).

Axis order: masks are numpy arrays in SimpleITK voxel order, (y, x) or (z, y, x) (a video
(t, y, x) counts as a volume); ``spacing`` is SimpleITK (x, y[, z]) in mm. MONAI wants spacing per
array axis, so it receives ``spacing[::-1]``.

Edge cases (chosen so that a cohort table never holds an undefined Dice):

============================  =====  =====  =====  =====
case                          dice   iou    nsd    hd95
============================  =====  =====  =====  =====
both masks empty              1.0    1.0    1.0    0.0
exactly one mask empty        0.0    0.0    0.0    NaN
============================  =====  =====  =====  =====

HD95 is NaN (not inf) when one mask is empty: a distance to nothing is undefined, NaN is skipped
by SQL/pandas aggregates, and ``pred_voxels`` / ``truth_voxels`` in the same row show which side
was empty.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import zarr
from PIL import Image

from medsam3.io.image import MedImage, check_same_space
from medsam3.types import PathLikeStr

GROUND_TRUTH_COLUMNS = ("study_id", "concept", "mask", "label_value")


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both masks as bool arrays after checking they are 2D/3D with equal shapes."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from ground truth shape {truth.shape}; "
            "resample the prediction onto the ground-truth grid first"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be (y, x) or (z, y, x), got {pred.ndim} axes {pred.shape}")
    return pred.astype(bool), truth.astype(bool)


def monai_spacing(spacing: tuple[float, ...] | None, ndim: int) -> tuple[float, ...]:
    """Convert SimpleITK (x, y[, z]) spacing to MONAI's per-array-axis order.

    Args:
        spacing: SimpleITK (x, y[, z]) spacing in mm, or None for unit (voxel) spacing.
        ndim: number of array axes (2 or 3).

    Returns:
        Spacing per numpy axis, i.e. (y, x) or (z, y, x), as floats.
    """
    if spacing is None:
        return (1.0,) * ndim
    if len(spacing) < ndim:
        raise ValueError(f"spacing {spacing} has fewer than {ndim} values for a {ndim}D mask")
    return tuple(float(s) for s in spacing[:ndim])[::-1]


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice and IoU of two binary masks.

    Args:
        pred: predicted mask, any shape; nonzero = foreground.
        truth: ground-truth mask, same shape.

    Returns:
        ``{"dice": float, "iou": float}``; both 1.0 when both masks are empty.
    """
    p, t = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    inter = int(np.logical_and(p, t).sum())
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": 2.0 * inter / total, "iou": inter / (total - inter)}


def _one_hot(mask: np.ndarray):
    """(spatial...) bool -> (1, 1, spatial...) float tensor, MONAI's batch/channel layout."""
    import torch  # with MONAI below: torch (7 s) only when surface metrics are computed

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def surface_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...] | None,
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float]:
    """Normalised surface Dice and HD95 through MONAI (edge cases as in the module docstring).

    Args:
        pred: predicted (y, x) or (z, y, x) mask; nonzero = foreground.
        truth: ground-truth mask of the same shape.
        spacing: SimpleITK (x, y[, z]) spacing in mm; None measures in voxels.
        nsd_tolerance_mm: surface distance (mm, or voxels without spacing) counted as correct.

    Returns:
        ``{"nsd": float in [0, 1], "hd95": float mm (NaN when exactly one mask is empty)}``.
    """
    p, t = _check_pair(pred, truth)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return {"nsd": 1.0, "hd95": 0.0}
    if p_any != t_any:
        return {"nsd": 0.0, "hd95": math.nan}
    # MONAI loads here, when two non-empty masks meet: importing monai.metrics takes 5 s
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    sp = monai_spacing(spacing, p.ndim)
    yp, yt = _one_hot(p), _one_hot(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)  # MONAI-internal deprecation notices
        nsd = compute_surface_dice(
            yp,
            yt,
            [float(nsd_tolerance_mm)],
            include_background=True,
            spacing=sp,
            use_subvoxels=True,
        )
        hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
    return {"nsd": float(nsd[0, 0]), "hd95": float(hd[0, 0])}


def segmentation_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...] | None,
    nsd_tolerance_mm: float = 2.0,
) -> dict[str, float | int]:
    """All per-mask metrics for one (study, concept).

    Args:
        pred: predicted (y, x) or (z, y, x) mask in SimpleITK voxel order; nonzero = foreground.
        truth: ground-truth mask, same shape and grid.
        spacing: SimpleITK (x, y[, z]) spacing in mm, or None to measure in voxels.
        nsd_tolerance_mm: NSD tolerance in mm (voxels when spacing is None).

    Returns:
        dict with dice, iou, nsd, hd95 (floats; hd95 in mm) and pred_voxels, truth_voxels (ints).
        Empty-mask conventions are listed in the module docstring.
    """
    p, t = _check_pair(pred, truth)
    out: dict[str, float | int] = dict(overlap_metrics(p, t))
    out.update(surface_metrics(p, t, spacing, nsd_tolerance_mm))
    out["pred_voxels"] = int(p.sum())
    out["truth_voxels"] = int(t.sum())
    return out


def presence_correct(pred_present: bool, truth_present: bool) -> bool:
    """True when the predicted presence of a concept matches the ground truth.

    Args:
        pred_present: the model says the concept is in the image (e.g. presence >= threshold).
        truth_present: the ground-truth mask has at least one foreground voxel.

    Returns:
        ``pred_present == truth_present``.
    """
    return bool(pred_present) == bool(truth_present)


def matthews(tp: int, fp: int, tn: int, fn: int) -> float:
    """Matthews correlation coefficient of a presence confusion matrix.

    Args:
        tp, fp, tn, fn: counts of true/false positives/negatives (non-negative ints).

    Returns:
        MCC in [-1, 1]; 0.0 when any marginal is zero (sklearn's convention).
    """
    denom = math.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    if denom == 0:
        return 0.0
    return (tp * tn - fp * fn) / denom


def _resolve_mask_ref(ref: str, base: Path) -> str:
    """Make the path part of ``path[#fragment]`` absolute relative to ``base``."""
    path, sep, frag = str(ref).partition("#")
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    return f"{p}{sep}{frag}"


def load_ground_truth(table_path: PathLikeStr) -> pd.DataFrame:
    """Read a ground-truth table (CSV) of masks per (study, concept).

    Args:
        table_path: CSV with columns study_id, concept, mask, label_value. ``mask`` is a
            PNG, a folder of per-frame PNGs (video), a NIfTI / other SimpleITK file, or a Zarr
            store path plus ``#labels/<name>`` or ``#image``; relative paths are resolved
            against the CSV's folder. An empty ``label_value`` means "any nonzero voxel".

    Returns:
        DataFrame with those columns; ``mask`` holds absolute references, ``label_value`` is an
        object column of Python ints, or None where empty (so row dicts hold plain values).
    """
    table_path = Path(table_path)
    df = pd.read_csv(table_path, dtype={"study_id": str, "concept": str, "mask": str})
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{table_path}: missing column(s) {missing}; expected {list(GROUND_TRUTH_COLUMNS)}"
        )
    df = df[list(GROUND_TRUTH_COLUMNS)].copy()
    values = pd.to_numeric(df["label_value"], errors="raise")
    df["label_value"] = pd.Series(
        [None if pd.isna(v) else int(v) for v in values], index=df.index, dtype=object
    )
    df["mask"] = [_resolve_mask_ref(m, table_path.parent) for m in df["mask"]]
    return df


def _select_label(labels: np.ndarray, label_value) -> np.ndarray:
    """uint8 0/1 of ``labels == label_value`` (any nonzero when label_value is missing)."""
    if label_value is None or pd.isna(label_value):
        return (labels != 0).astype(np.uint8)
    return (labels == int(label_value)).astype(np.uint8)


def _png_array(path: Path) -> np.ndarray:
    """A PNG as a 2D grey-level array (colour masks are converted to luminance)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)


def _read_png_truth(path: Path, label_value, like: MedImage) -> np.ndarray:
    """PNG mask, or a folder of per-frame PNGs (video, sorted by name, stacked along t).

    label_value 255 (or empty) selects every nonzero pixel, so 0/1 and 0/255 masks both work.
    """
    if path.is_dir():
        frames = sorted(path.glob("*.png"))
        if not frames:
            raise FileNotFoundError(f"ground-truth folder {path} holds no PNG frames")
        arr = np.stack([_png_array(f) for f in frames])
    else:
        arr = _png_array(path)
    if arr.shape != like.spatial_shape:
        raise ValueError(
            f"ground-truth mask {path.name} has shape {arr.shape} but the image has "
            f"{like.spatial_shape}; masks must be pixel-aligned with their image"
        )
    if label_value is not None and not pd.isna(label_value) and int(label_value) == 255:
        label_value = None
    return _select_label(arr, label_value)


def _read_zarr_truth(ref: str, like: MedImage) -> tuple[np.ndarray, MedImage | None]:
    """Zarr ``store#labels/<name>`` or ``store#0`` (a medsam3 store's image, level 0): array
    and geometry when stored."""
    store, _, key = ref.partition("#")
    root = zarr.open_group(store, mode="r")
    node = root[key or "0"]
    if isinstance(node, zarr.Group):  # an OME-Zarr image or label: level 0
        node = node["0"]
    arr = np.asarray(node[...])
    attrs = {**dict(root.attrs), **dict(node.attrs)}
    if all(k in attrs for k in ("spacing", "origin", "direction")):
        geo = MedImage(
            arr,
            like.kind,
            tuple(attrs["spacing"]),
            tuple(attrs["origin"]),
            tuple(attrs["direction"]),
        )
        return arr, geo
    return arr, None


def read_truth_mask(row, like: MedImage) -> np.ndarray:
    """Read one ground-truth mask, select its label and check it lies on the image's grid.

    Args:
        row: a row of :func:`load_ground_truth` (mapping with ``mask`` and ``label_value``);
            ``mask`` may also be a folder of per-frame PNGs (``frame_0000.png`` ...) for video.
        like: the image the prediction was made on; the mask must share its space.

    Returns:
        uint8 0/1 array with ``like.spatial_shape``, SimpleITK voxel order.

    Raises:
        ValueError: when the mask's shape or geometry differs from ``like``.
        FileNotFoundError: when the mask file is missing.
    """
    ref, label_value = str(row["mask"]), row["label_value"]
    path = Path(ref.partition("#")[0])
    if not path.exists():
        raise FileNotFoundError(f"ground-truth mask {path} does not exist; fix the truth table")
    if path.suffix.lower() == ".png" or (path.is_dir() and any(path.glob("*.png"))):
        return _read_png_truth(path, label_value, like)
    if "#" in ref or path.suffix.lower() == ".zarr":
        arr, geo = _read_zarr_truth(ref, like)
    else:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
        geo = MedImage.from_sitk(img, like.kind)
    if geo is not None:
        check_same_space(geo, like, what=f"ground-truth mask {path.name} and its image")
    elif arr.shape != like.spatial_shape:
        raise ValueError(
            f"ground-truth mask {path.name} has shape {arr.shape} but the image has "
            f"{like.spatial_shape}; resample the mask onto the image (nearest neighbour)"
        )
    return _select_label(arr, label_value)
