"""DICOM slice geometry: per-frame planes, ordering along the slice normal, rescale.

Conventions: positions/orientations are DICOM LPS; results are in SimpleITK's (x, y, z) order.
Slices are ordered by position along the normal (row cosine x column cosine), never by file
name or InstanceNumber. The grid is orthonormal: direction columns are the row cosine, column
cosine and normal, and the z spacing is the mean gap along the normal. Without gantry tilt this
is exactly SimpleITK's ImageSeriesReader geometry. Under gantry tilt the slices are sheared;
SimpleITK then uses |last - first| / (n - 1) as spacing (too large by 1 / cos(tilt)), while
here each slice keeps its true depth along the normal and only the in-plane shift is ignored
(reported as a warning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medsam3.io.common import ReadError

MISSING_SLICES = "missing slices"  # the start of the warning of spacing_warnings


@dataclass
class Plane:
    """One 2D frame with its DICOM geometry and rescale (pixels (y, x[, c]))."""

    pixels: np.ndarray
    pos: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float = 1.0
    intercept: float = 0.0


def _floats(value: object, n: int) -> np.ndarray | None:
    """A DICOM multi-value as a float array of length n, or None."""
    if value is None:
        return None
    out = np.asarray([float(v) for v in value], float)
    return out if out.size == n else None


def _rescale_of(item: Dataset) -> tuple[float, float]:
    """(slope, intercept) of a dataset or functional-group item (1, 0 when absent)."""
    return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)


def plane_from_single(ds: Dataset, pixels: np.ndarray) -> Plane:
    """Geometry and rescale of a single-frame dataset as a Plane."""
    ps = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"), 2)
    slope, intercept = _rescale_of(ds)
    return Plane(
        pixels=pixels,
        pos=_floats(ds.get("ImagePositionPatient"), 3),
        iop=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=None if ps is None else (ps[0], ps[1]),
        slope=slope,
        intercept=intercept,
    )


def _group(frame: Dataset, shared: Dataset, seq: str) -> Dataset:
    """The first item of functional group ``seq`` (per-frame first, then shared), or empty."""
    for src in (frame, shared):
        if seq in src and len(src[seq].value):
            return src[seq].value[0]
    return Dataset()


def planes_from_enhanced(ds: Dataset, pixels: np.ndarray) -> list[Plane]:
    """Per-frame Planes of an enhanced multi-frame dataset (pixels (frames, y, x[, c]))."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    planes = []
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        pos = _group(frame, shared, "PlanePositionSequence").get("ImagePositionPatient")
        iop = _group(frame, shared, "PlaneOrientationSequence").get("ImageOrientationPatient")
        ps = _group(frame, shared, "PixelMeasuresSequence").get("PixelSpacing")
        transform = _group(frame, shared, "PixelValueTransformationSequence")
        slope, intercept = _rescale_of(transform if len(transform) else ds)
        ps_arr = _floats(ps, 2)
        planes.append(
            Plane(
                pixels=pixels[k],
                pos=_floats(pos, 3),
                iop=_floats(iop if iop is not None else ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=None if ps_arr is None else (ps_arr[0], ps_arr[1]),
                slope=slope,
                intercept=intercept,
            )
        )
    return planes


def rescale(stack: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply per-slice slope/intercept to ``stack`` (n, y, x): int16 when exact, else float32.

    Args:
        stack: stored values (n, y, x), integer or float; a writable int16 stack is
            rescaled in place.
        slopes, intercepts: (n,) per-slice RescaleSlope / RescaleIntercept.

    Returns:
        The modality values, int16 where every result (and intermediate product) is an exact
        int16, else float32 (the input array unchanged when slope 1 and intercept 0 throughout).
    """
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stack
    lo, hi = (float(stack.min()), float(stack.max())) if stack.dtype.kind in "iu" else (0, 0)
    if _integral(stack, slopes, intercepts) and _fits_int16(lo, hi, slopes, intercepts):
        if stack.dtype == np.int16 and stack.flags.writeable:
            out = stack
        else:
            out = stack.astype(np.int16)
        _apply(out, slopes.astype(np.int16), intercepts.astype(np.int16))
        return out
    out = stack.astype(np.float32)
    _apply(out, slopes.astype(np.float32), intercepts.astype(np.float32))
    return out


def stack_rescaled(
    frames: list[np.ndarray], slopes: np.ndarray, intercepts: np.ndarray
) -> np.ndarray:
    """``rescale(np.stack(frames), slopes, intercepts)`` in one pass over the frames.

    Each frame is copied, rescaled and measured while it is in the cache; the int16 result
    is kept when the measured range proves it exact, else the frames are stacked again as
    float32 (rare: stored values near the int16 limits).

    Args:
        frames: n stored-value frames of one shape ((y, x) or (y, x, c)), in volume order.
        slopes, intercepts: (n,) RescaleSlope / RescaleIntercept of the frames.

    Returns:
        (n, ...) modality values, with the dtype and values that ``rescale`` gives.
    """
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return _fill(frames, frames[0].dtype, slopes, intercepts, apply=False)[0]
    if _integral(frames[0], slopes, intercepts):
        out, lo, hi = _fill(frames, np.dtype(np.int16), slopes, intercepts, apply=True)
        if _fits_int16(lo, hi, slopes, intercepts):
            return out
    return _fill(frames, np.dtype(np.float32), slopes, intercepts, apply=True)[0]


def _fill(frames, dtype: np.dtype, slopes, intercepts, apply: bool):
    """(stack of ``frames`` as ``dtype``, rescaled in place if ``apply``; lowest and highest
    stored value, measured on integer frames only)."""
    out = np.empty((len(frames), *frames[0].shape), dtype)
    slopes, intercepts = slopes.astype(dtype), intercepts.astype(dtype)
    lo, hi, measure = np.inf, -np.inf, apply and dtype == np.int16
    for k, frame in enumerate(frames):
        plane = out[k]
        np.copyto(plane, frame, casting="unsafe")
        if apply and slopes[k] != 1:
            plane *= slopes[k]
        if apply and intercepts[k] != 0:
            plane += intercepts[k]
        if measure:
            lo, hi = min(lo, float(frame.min())), max(hi, float(frame.max()))
    return out, lo, hi


def _integral(stack: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> bool:
    """Integer stored values and whole slopes and intercepts (an int16 result may be exact)."""
    whole = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    return bool(whole and stack.dtype.kind in "iu")


def _fits_int16(lo: float, hi: float, slopes: np.ndarray, intercepts: np.ndarray) -> bool:
    """True when stored values ``lo``..``hi``, products and results all stay within int16."""
    values = np.concatenate([[lo, hi], lo * slopes, hi * slopes])
    values = np.concatenate([values, lo * slopes + intercepts, hi * slopes + intercepts])
    return bool(values.min() >= -32768 and values.max() <= 32767)


def _apply(out: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> None:
    """In place: out[k] = out[k] * slopes[k] + intercepts[k] (vectorised when uniform)."""
    if np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]):
        if slopes[0] != 1:
            out *= slopes[0]
        out += intercepts[0]
        return
    for k in range(len(out)):
        out[k] *= slopes[k]
        out[k] += intercepts[k]


def spacing_warnings(gaps: np.ndarray) -> list[str]:
    """Warnings about irregular spacing and missing slices from sorted slice gaps (mm).

    Args:
        gaps: (n - 1,) distances between consecutive slices along the slice normal, in mm.

    Returns:
        Zero, one or two warning strings (no identifiers).
    """
    if gaps.size < 2:
        return []
    med = float(np.median(gaps))
    out = []
    missing = gaps > 1.5 * med
    if missing.any():
        n_missing = int(np.sum(np.round(gaps[missing] / med) - 1))
        out.append(
            f"{MISSING_SLICES}: {int(missing.sum())} gap(s) up to {gaps.max():.3g} mm where the "
            f"median spacing is {med:.3g} mm (about {n_missing} slice(s) absent); voxel "
            "positions use the mean spacing, so resample or re-export the complete series"
        )
    elif np.abs(gaps - med).max() > max(0.01 * med, 1e-3):
        out.append(
            f"irregular slice spacing: gaps {gaps.min():.4g}-{gaps.max():.4g} mm (median "
            f"{med:.4g} mm); voxel positions use the mean spacing, as SimpleITK does"
        )
    return out


def _tilt_warnings(span: np.ndarray, normal: np.ndarray) -> list[str]:
    """A gantry-tilt warning when the first-to-last slice vector ``span`` (mm) leaves the
    slice normal by more than 0.05 degrees."""
    depth = float(span @ normal)
    shift = float(np.linalg.norm(span - depth * normal))
    tilt = float(np.degrees(np.arctan2(shift, abs(depth))))
    if tilt <= 0.05:
        return []
    return [
        f"gantry tilt of {tilt:.2f} degrees: slices are sheared; the volume uses an orthogonal "
        f"grid along the slice normal, ignoring an in-plane shift of up to {shift:.3g} mm; "
        "resample with the DICOM positions if exact placement matters"
    ]


def _check_planes(planes: list[Plane], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate orientation/shape consistency; return (iop (6,), positions (n, 3))."""
    if any(p.iop is None or p.pos is None for p in planes):
        raise ReadError(
            f"{where}: some slices lack ImagePositionPatient/ImageOrientationPatient, so they "
            "cannot be ordered; re-export the series with full geometry"
        )
    iops = np.stack([p.iop for p in planes])
    if not np.allclose(iops, iops[0], atol=1e-3):
        n = len(np.unique(np.round(iops, 3), axis=0))
        raise ReadError(
            f"{where}: slices have {n} different orientations (a localizer mixed in?); "
            "remove the odd slices or run `medsam3 discover` and pick one series"
        )
    if len({p.pixels.shape for p in planes}) > 1:
        raise ReadError(f"{where}: slices differ in size; remove the odd slices")
    return iops[0], np.stack([p.pos for p in planes])


def order_along_normal(
    positions: np.ndarray, orientation: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The volume order of slices: ascending position along the slice normal.

    This is the z order of SimpleITK's / GDCM's series reader and of medsam3's Zarr volumes,
    and the one order used everywhere (reading a series, and DICOM-SEG export, whose frames
    must meet the source slices they were segmented on).

    Args:
        positions: (n, 3) ImagePositionPatient of the slices (LPS mm), any order.
        orientation: (6,) ImageOrientationPatient (row cosines, then column cosines).

    Returns:
        (order, depth, normal): indices that sort the slices (stable for equal depths), each
        slice's depth along the normal in mm, and the unit normal (row x column cosines).
    """
    iop = np.asarray(orientation, float)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    depth = np.asarray(positions, float) @ normal
    return np.argsort(depth, kind="stable"), depth, normal


def stack_planes(planes: list[Plane], where: str, thickness: float = 1.0) -> dict:
    """Order planes along the slice normal and compute SimpleITK geometry.

    Args:
        planes: slices of one series (any order).
        where: the source as the user named it (for messages).
        thickness: z spacing for a single slice (SpacingBetweenSlices or SliceThickness).

    Returns:
        dict with array (z, y, x[, c]) in slice order with rescale applied, spacing (x, y, z),
        origin (x, y, z) LPS of the first slice, direction (9 floats row-major), warnings.
    """
    iop, pos = _check_planes(planes, where)
    row, col = iop[:3], iop[3:]
    order, proj, normal = order_along_normal(pos, iop)
    gaps = np.diff(proj[order])
    warnings: list[str] = []
    if gaps.size and gaps.min() < 1e-3 * max(float(np.median(gaps)), 1e-3):
        n_dup = int(np.sum(gaps < 1e-3 * max(float(np.median(gaps)), 1e-3)))
        raise ReadError(
            f"{where}: {n_dup} slice(s) share a position with another slice (several echoes, "
            "phases or time points in one series?); split the series before reading"
        )
    dz = thickness
    if len(planes) > 1:
        dz = float(proj[order[-1]] - proj[order[0]]) / (len(planes) - 1)
        warnings += _tilt_warnings(pos[order[-1]] - pos[order[0]], normal)
        warnings += spacing_warnings(gaps)
    ps, unit = planes[0].pixel_spacing, "mm"
    if ps is None:
        ps, unit = (1.0, 1.0), "pixel"
        warnings.append("no PixelSpacing: in-plane spacing is 1 per pixel (sizes in voxels)")
    slopes = np.array([planes[k].slope for k in order])
    intercepts = np.array([planes[k].intercept for k in order])
    return {
        "array": stack_rescaled([planes[k].pixels for k in order], slopes, intercepts),
        "spacing": (float(ps[1]), float(ps[0]), dz),
        "origin": tuple(float(v) for v in pos[order[0]]),
        "direction": tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()),
        "warnings": warnings,
        "spacing_unit": unit,
    }
