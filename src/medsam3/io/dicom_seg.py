"""DICOM Segmentation export (highdicom): one binary segment referencing its source series.

A DICOM-SEG is a DICOM object of the source's study: highdicom copies the patient and study
modules of the sources into it, as the standard requires, so it carries the patient's name,
ID and birth date like the source images (the opt-in ``dicom-seg`` export; see the README's
privacy section).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medsam3.io.atomic import atomic_path
from medsam3.io.dicom_geometry import order_along_normal
from medsam3.io.dicom_load import has_pixel_data
from medsam3.types import PathLikeStr

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
