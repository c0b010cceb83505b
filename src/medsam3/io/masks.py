"""Mask files: NIfTI (source geometry), PNG, per-frame video masks and DICOM-SEG.

:func:`write_concept_masks` is the one writer of a concept's mask files, used by the pipeline
(``{outdir}/masks/{study_id}/``) and by ``medsam3 segment``; the functions below it write one
format each.

All writers are atomic: they write a temporary sibling file (same suffixes, so ``.nii.gz`` stays
gzip NIfTI) and ``os.replace`` it onto the target, so a crash never leaves a partial file.

Value conventions:
- NIfTI: uint8 voxels as given (0/1 masks stay 0/1, instance ids stay ids).
- PNG: a binary mask (values only 0/1) is written 0/255 so it is visible; any other mask is
  written with its values unchanged (instance ids; uint8 when max <= 255, else 16-bit PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image
from pydicom.sr.codedict import codes

from medsam3._version import __version__
from medsam3.io.atomic import atomic_path
from medsam3.io.common import concept_slug
from medsam3.io.dicom import has_pixel_data
from medsam3.io.dicom_geometry import order_along_normal
from medsam3.io.image import MedImage
from medsam3.io.read import dicom_files
from medsam3.types import PathLikeStr

MASK_FORMATS = ("nifti", "png", "dicom-seg")

_ABNORMAL = {"Neoplasm", "Tumor", "Lesion", "Nodule", "Mass", "Cyst", "Polyp", "Calculus"}
# Type 2 attributes of the patient and study modules that highdicom copies from the source:
# they must be present, and may be empty, so a source that omits one gets an empty value.
_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


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
        mask: (y, x) or (z, y, x) mask in SimpleITK voxel order, values 0..255.
        image: the source image; its spacing, origin and direction are copied.
        path: destination, e.g. ``liver.nii.gz``.

    Returns:
        The destination path.
    """
    mask = _check_mask(mask, image.spatial_shape, str(path))
    if mask.max(initial=0) > 255:
        raise ValueError(f"{path}: mask values above 255 do not fit uint8 NIfTI")
    out = sitk.GetImageFromArray(mask.astype(np.uint8))
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

    ``fmt="png"``: ``outdir/frame_0000.png ...`` (one per frame; binary vs instance-id coding is
    decided once for the whole video). ``fmt="nifti"``: ``outdir/mask.nii.gz`` with spacing
    (x, y, 1/fps) -- seconds per frame on the third axis, or 1 when the frame rate is unknown --
    the image's (x, y) origin with 0 for time, and an identity direction.

    Args:
        mask: (t, y, x) uint8 mask, 0/1 or instance ids.
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
        binary = bool(mask.max(initial=0) <= 1)
        return [export_png(f, outdir / f"frame_{t:04d}.png", binary) for t, f in enumerate(mask)]
    if fmt != "nifti":
        raise ValueError(f"fmt must be 'png' or 'nifti', got {fmt!r}")
    dt = 1.0 / image.frame_rate if image.frame_rate else 1.0
    sx, sy = (float(s) for s in image.spacing[:2])
    ox, oy = (float(o) for o in image.origin[:2])
    geo = MedImage(mask, "volume", (sx, sy, dt), (ox, oy, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return [export_nifti(mask, geo, outdir / "mask.nii.gz")]


def concept_codes(concept: str):
    """SNOMED CT category and type codes for a concept phrase (a small built-in map).

    The phrase in CamelCase (``"left atrium"`` -> ``LeftAtrium``), then its last word, is looked
    up in pydicom's SCT code dictionary; lesion-like terms get the category "Morphologically
    Abnormal Structure", other hits "Anatomical Structure". Unknown phrases get the generic
    category and type "Tissue" (SCT 85756007).

    Args:
        concept: concept phrase, e.g. "liver", "brain tumor".

    Returns:
        (category, type) as ``pydicom.sr.coding.Code``.
    """
    words = [w for w in concept.replace("-", " ").replace("_", " ").split() if w.isalpha()]
    for name in ("".join(w.capitalize() for w in words), words[-1].capitalize() if words else ""):
        try:
            code = getattr(codes.SCT, name) if name else None
        except AttributeError:
            code = None
        if code is not None:
            abnormal = name in _ABNORMAL or (words and words[-1].capitalize() in _ABNORMAL)
            cat = codes.SCT.MorphologicallyAbnormalStructure if abnormal else None
            return cat or codes.SCT.AnatomicalStructure, code
    return codes.SCT.Tissue, codes.SCT.Tissue


def sort_along_normal(datasets: list) -> list:
    """Sort single-frame slices into volume (z) order, as the series reader orders them.

    Args:
        datasets: pydicom datasets of one series with ImagePositionPatient and
            ImageOrientationPatient.

    Returns:
        The datasets in volume order (:func:`medsam3.io.dicom_geometry.order_along_normal`).
    """
    for ds in datasets:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise ValueError(
                "a source slice lacks ImagePositionPatient/ImageOrientationPatient; "
                "DICOM-SEG export needs positioned single-frame slices"
            )
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=float)
    order, _, _ = order_along_normal(positions, np.array(datasets[0].ImageOrientationPatient))
    return [datasets[k] for k in order]


def _read_sources(source_files: list[Path], mask_shape: tuple[int, ...]) -> list:
    """Read the source series, check it matches the mask and return it in volume order.

    Files without pixel data are left out, as the series reader leaves them out; a Type 2
    attribute that highdicom copies (``_TYPE2_COPIED``) and a source omits is set empty.
    """
    datasets = [pydicom.dcmread(str(p)) for p in source_files]
    datasets = [ds for ds in datasets if has_pixel_data(ds)]
    for ds in datasets:
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    if not datasets:
        raise ValueError("none of the source files holds pixel data; pass the image series")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ValueError(
            "DICOM-SEG export supports series of single-frame slices only; "
            "multi-frame sources are not handled yet"
        )
    if len({ds.SeriesInstanceUID for ds in datasets}) != 1:
        raise ValueError("source files belong to several series; pass one series' slices")
    if len(datasets) != mask_shape[0]:
        raise ValueError(
            f"mask has {mask_shape[0]} slices but {len(datasets)} source files "
            "were given; pass every slice of the series the mask was made on"
        )
    rows_cols = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if rows_cols != {tuple(mask_shape[1:])}:
        raise ValueError(f"mask slices are {mask_shape[1:]} but the sources are {rows_cols}")
    return sort_along_normal(datasets)


def export_dicom_seg(
    mask: np.ndarray,
    source_files: list[Path],
    concept: str,
    path: PathLikeStr,
    algorithm: str,
    version: str,
) -> Path:
    """Write a binary DICOM Segmentation referencing its source series (via highdicom).

    The mask's z axis is the volume order of medsam3 (ascending position along the slice
    normal); the source slices are sorted the same way (:func:`sort_along_normal`) so that
    ``mask[k]`` becomes the frame of the k-th sorted slice. Empty frames are omitted (unless the
    whole mask is empty). The SEG is a DICOM object: highdicom copies the patient and study
    modules of the sources into it, as the standard requires, so treat it like the sources.

    Args:
        mask: (z, y, x) mask, nonzero = the concept.
        source_files: the single-frame DICOM files of the source series, any order.
        concept: concept phrase (segment label; SNOMED codes via :func:`concept_codes`).
        path: destination ``.dcm``.
        algorithm: algorithm name written to the segment's algorithm identification.
        version: algorithm version.

    Returns:
        The destination path.
    """
    import highdicom as hd  # 0.8 s to import, and only DICOM-SEG export needs it

    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"DICOM-SEG export needs a (z, y, x) mask, got shape {mask.shape}")
    sources = _read_sources([Path(p) for p in source_files], mask.shape)
    category, prop_type = concept_codes(concept)
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=version
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=concept[:64],
        segmented_property_category=category,
        segmented_property_type=prop_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    binary = (mask > 0).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=binary,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsam3",
        manufacturer_model_name=algorithm[:64],
        software_versions=version,
        device_serial_number="0",
        omit_empty_frames=bool(binary.any()),
        series_description=f"medsam3 {concept}"[:64],
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


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

    Files, with ``slug = concept_slug(concept)``: 2D images ``slug.png`` ("png"); volumes
    ``slug.nii.gz`` with the source geometry ("nifti") and ``slug.dcm`` ("dicom-seg", when
    ``source`` is a DICOM series); videos ``slug/frame_0000.png ...`` ("png"), or
    ``slug/mask.nii.gz`` when only "nifti" is asked for.

    Args:
        label: uint8 mask on the image grid ((y, x), (z, y, x) or (t, y, x)), 0/1 or instance ids.
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
        written.append(export_png(label, base / f"{slug}.png"))
    if image.kind == "volume" and "nifti" in formats:
        written.append(export_nifti(label, image, base / f"{slug}.nii.gz"))
    if image.kind == "video" and ("png" in formats or "nifti" in formats):
        fmt = "png" if "png" in formats else "nifti"
        written += export_video_masks(label, image, base / slug, fmt=fmt)
    if image.kind == "volume" and "dicom-seg" in formats and source is not None:
        sources = dicom_files(source)
        if sources:
            path, binary = base / f"{slug}.dcm", label > 0
            written.append(export_dicom_seg(binary, sources, concept, path, algorithm, __version__))
    return written
