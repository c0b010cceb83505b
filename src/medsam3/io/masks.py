"""Mask files: NIfTI (source geometry), PNG, per-frame video masks, DICOM-SEG, and the one
definition of a concept's instances.

:func:`instance_labels` turns a segmentation (union mask, instance masks and scores) into the
instance-id label map that every product holds: the Zarr label, the NIfTI files, the segments
table and ``summary.json``. :func:`write_concept_masks` is the one writer of a concept's mask
files and :func:`write_multilabel_nifti` of a study's single multi-label NIfTI, used by the
pipeline (``{outdir}/masks/{study_id}/``) and by ``medsam3 segment`` alike.

All writers are atomic: they write a temporary sibling file (same suffixes, so ``.nii.gz`` stays
gzip NIfTI) and ``os.replace`` it onto the target, so a crash never leaves a partial file.

Value conventions:
- NIfTI: instance ids 1..n (0 background), uint8 up to 255 instances, else uint16/uint32.
- PNG (2D images and video frames): binary, 0 and 255, so any viewer shows the mask; the ids
  are in the NIfTI and Zarr labels.
- multi-label NIfTI (``segmentations.nii.gz``, like TotalSegmentator's ``--ml``): value k is the
  k-th concept, named in the sidecar ``segmentations.json``; where concepts overlap the first
  listed wins.
- DICOM-SEG: one binary segment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from medsam3._version import __version__
from medsam3.io.atomic import atomic_path, write_text_atomic
from medsam3.io.common import concept_slug
from medsam3.io.dicom_seg import export_dicom_seg
from medsam3.io.image import MedImage
from medsam3.io.read import dicom_files
from medsam3.types import PathLikeStr

MASK_FORMATS = ("nifti", "png", "dicom-seg", "nifti-ml")
MULTILABEL = "segmentations"  # file stem of the multi-label NIfTI and its sidecar


def _uint(n: int):
    """The smallest unsigned dtype holding ids up to ``n``."""
    return np.uint8 if n <= 255 else (np.uint16 if n <= 65535 else np.uint32)


def instance_labels(
    union: np.ndarray, instances: Sequence[np.ndarray], scores: Sequence[float], presence: float
) -> tuple[np.ndarray, list[float]]:
    """The instance-id label map of one concept, and one score per id.

    The instances are the model's instance masks (restricted to the union, an overlap going to
    the first) when they cover the whole union; otherwise the fully connected components
    (8-connected in 2D, 26 in 3D) of the union, each scored by the best model instance that
    overlaps it, or by the concept's presence when none does. Ids are 1..n with no gaps.

    Args:
        union: the concept's mask (nonzero = concept), the input's spatial shape.
        instances: the model's instance masks (bool, same shape), in the model's order.
        scores: their scores, same order.
        presence: the concept's presence probability.

    Returns:
        (label map of the smallest unsigned dtype holding n, [score of id 1, ..., id n]).
    """
    union = np.asarray(union).astype(bool)
    masks = [np.asarray(m, bool) & union for m in instances]
    label = np.zeros(union.shape, _uint(len(masks)))
    kept: list[float] = []
    for mask, score in zip(masks, scores, strict=True):
        free = mask & (label == 0)
        if free.any():
            kept.append(float(score))
            label[free] = len(kept)
    if kept and np.array_equal(label > 0, union):
        return label, kept
    structure = ndimage.generate_binary_structure(union.ndim, union.ndim)
    components, n = ndimage.label(union, structure=structure)
    ids = components.astype(_uint(n))
    best: list[float | None] = [None] * n
    for mask, score in zip(masks, scores, strict=True):
        for k in np.unique(ids[mask]).tolist():
            if k:
                best[k - 1] = max(best[k - 1] or 0.0, float(score))
    return ids, [float(presence) if b is None else b for b in best]


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Return ``mask`` after checking its shape equals ``shape`` and it holds non-negative ints."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{what}: mask shape {mask.shape} differs from the image's {shape}")
    if mask.dtype.kind not in "biu" or (mask.size and mask.min() < 0):
        raise ValueError(f"{what}: mask must hold non-negative integers or bools, got {mask.dtype}")
    return mask


def export_nifti(mask: np.ndarray, image: MedImage, path: PathLikeStr) -> Path:
    """Write a mask as NIfTI with the source image's geometry.

    Args:
        mask: (y, x) or (z, y, x) mask in SimpleITK voxel order, non-negative ids (stored in
            the smallest unsigned integer type that holds them).
        image: the source image; its spacing, origin and direction are copied.
        path: destination, e.g. ``liver.nii.gz``.

    Returns:
        The destination path.
    """
    mask = _check_mask(mask, image.spatial_shape, str(path))
    out = sitk.GetImageFromArray(mask.astype(_uint(int(mask.max(initial=0)))))
    out.SetSpacing([float(s) for s in image.spacing])
    out.SetOrigin([float(o) for o in image.origin])
    out.SetDirection([float(d) for d in image.direction])
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    return Path(path)


def _png_pixels(mask: np.ndarray, binary: bool) -> np.ndarray:
    """0/255 uint8 for binary masks, else ids as uint8 / uint16."""
    if binary:
        return (mask > 0).astype(np.uint8) * 255
    return mask.astype(np.uint8 if mask.max(initial=0) <= 255 else np.uint16)


def export_png(mask2d: np.ndarray, path: PathLikeStr, binary: bool | None = None) -> Path:
    """Write a 2D mask as PNG (see the module docstring for value conventions).

    Args:
        mask2d: (y, x) mask of non-negative ints or bools.
        path: destination ``.png``.
        binary: force 0/255 (True) or raw values (False); None decides from the values.

    Returns:
        The destination path.
    """
    mask2d = np.asarray(mask2d)
    if mask2d.ndim != 2:
        raise ValueError(f"{path}: export_png needs a (y, x) mask, got shape {mask2d.shape}")
    mask2d = _check_mask(mask2d, mask2d.shape, str(path))
    if binary is None:
        binary = mask2d.max(initial=0) <= 1
    with atomic_path(path) as tmp:
        Image.fromarray(_png_pixels(mask2d, binary)).save(tmp, format="PNG")
    return Path(path)


def export_video_masks(
    mask: np.ndarray, image: MedImage, outdir: PathLikeStr, fmt: str = "png"
) -> list[Path]:
    """Write a video mask as per-frame PNGs or one NIfTI over (t, y, x).

    ``fmt="png"``: ``outdir/frame_0000.png ...`` (one per frame, 0/255). ``fmt="nifti"``:
    ``outdir/mask.nii.gz`` with spacing (x, y, 1/fps) -- seconds per frame on the third axis,
    or 1 when the frame rate is unknown -- the image's (x, y) origin with 0 for time, and an
    identity direction.

    Args:
        mask: (t, y, x) instance ids (or a 0/1 mask).
        image: the source video (kind "video").
        outdir: destination folder (created).
        fmt: "png" or "nifti".

    Returns:
        The written paths (frames in order, or the single NIfTI).
    """
    mask = _check_mask(mask, image.spatial_shape, str(outdir))
    if mask.ndim != 3:
        raise ValueError(f"video masks are (t, y, x); got shape {mask.shape}")
    outdir = Path(outdir)
    if fmt == "png":
        return [export_png(f, outdir / f"frame_{t:04d}.png", True) for t, f in enumerate(mask)]
    if fmt != "nifti":
        raise ValueError(f"fmt must be 'png' or 'nifti', got {fmt!r}")
    dt = 1.0 / image.frame_rate if image.frame_rate else 1.0
    sx, sy = (float(s) for s in image.spacing[:2])
    ox, oy = (float(o) for o in image.origin[:2])
    geo = MedImage(mask, "volume", (sx, sy, dt), (ox, oy, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return [export_nifti(mask, geo, outdir / "mask.nii.gz")]


def write_concept_masks(
    label: np.ndarray,
    image: MedImage,
    concept: str,
    folder: PathLikeStr,
    formats: Sequence[str] = ("nifti", "png"),
    source: PathLikeStr | None = None,
    algorithm: str = "medsam3",
) -> list[Path]:
    """Write one concept's mask in each requested format that fits the image's kind.

    Files, with ``slug = concept_slug(concept)``: 2D images ``slug.png`` ("png", 0/255) and
    ``slug.nii.gz`` ("nifti", instance ids); volumes ``slug.nii.gz`` with the source geometry
    ("nifti", instance ids) and ``slug.dcm`` ("dicom-seg", when ``source`` is a DICOM series);
    videos ``slug/frame_0000.png ...`` ("png", 0/255) and ``slug/mask.nii.gz`` over (t, y, x)
    ("nifti", instance ids). "nifti-ml" is written per study by
    :func:`write_multilabel_nifti`.

    Args:
        label: instance ids on the image grid ((y, x), (z, y, x) or (t, y, x);
            :func:`instance_labels`).
        image: the segmented image (geometry source).
        concept: the concept phrase (file names, DICOM-SEG segment label).
        folder: destination folder (created).
        formats: any of ``MASK_FORMATS``.
        source: the study's source path (DICOM-SEG references its files).
        algorithm: algorithm name recorded in DICOM-SEG.

    Returns:
        The written files, in the order above (video frames in order).
    """
    base, slug = Path(folder), concept_slug(concept)
    written: list[Path] = []
    if image.kind == "image" and "png" in formats:
        written.append(export_png(label, base / f"{slug}.png", binary=True))
    if image.kind in ("image", "volume") and "nifti" in formats:
        written.append(export_nifti(label, image, base / f"{slug}.nii.gz"))
    if image.kind == "video":
        for fmt in ("png", "nifti"):
            if fmt in formats:
                written += export_video_masks(label, image, base / slug, fmt=fmt)
    if image.kind == "volume" and "dicom-seg" in formats and source is not None:
        sources = dicom_files(source)
        if sources:
            path, binary = base / f"{slug}.dcm", label > 0
            written.append(export_dicom_seg(binary, sources, concept, path, algorithm, __version__))
    return written


def write_multilabel_nifti(
    labels: dict[str, np.ndarray], image: MedImage, folder: PathLikeStr
) -> list[Path]:
    """Write a study's concepts as one multi-label NIfTI and a sidecar naming its values.

    Like TotalSegmentator's ``--ml``: ``segmentations.nii.gz`` holds value k where the k-th
    concept (in the given order) is, 0 elsewhere (where concepts overlap, the first wins), and
    ``segmentations.json`` maps each value to its concept: ``{"1": "liver", ...}``.

    Args:
        labels: concept phrase -> label map (nonzero = the concept) on the image grid, in order.
        image: the segmented image (geometry source; an image or a volume).
        folder: destination folder.

    Returns:
        [the NIfTI, the sidecar]; [] for videos or no concepts.
    """
    if image.kind == "video" or not labels:
        return []
    merged = np.zeros(image.spatial_shape, _uint(len(labels)))
    for k, label in enumerate(labels.values(), start=1):
        merged[(np.asarray(label) > 0) & (merged == 0)] = k
    base = Path(folder)
    nifti = export_nifti(merged, image, base / f"{MULTILABEL}.nii.gz")
    names = {str(k): phrase for k, phrase in enumerate(labels, start=1)}
    sidecar = write_text_atomic(base / f"{MULTILABEL}.json", json.dumps(names, indent=2) + "\n")
    return [nifti, sidecar]
