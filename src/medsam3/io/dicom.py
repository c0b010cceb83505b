"""DICOM reading with pydicom: single-frame series, enhanced multi-frame volumes and 2D images.

Geometry rules (all documented in ``read_dicom``):
- slices are ordered by their position along the slice normal (row cosine x column cosine,
  dotted with ImagePositionPatient), never by file name or InstanceNumber;
- the grid is orthonormal (row cosine, column cosine, normal) with the mean gap along the normal
  as z spacing: SimpleITK's geometry, except under gantry tilt (see ``dicom_geometry``);
- RescaleSlope/Intercept are applied (int16 when exact, else float32); CT units are "HU".
Multi-frame files without per-frame positions (ultrasound cine, ...) are read as video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medsam3.io.body_region import region_of_dicom
from medsam3.io.common import ReadError, combine_digests, environment_cause, scrub_identifiers
from medsam3.io.dicom_geometry import (
    MISSING_SLICES,
    plane_from_single,
    planes_from_enhanced,
    rescale,
    stack_planes,
)
from medsam3.io.dicom_load import LoadedFile, load_images, n_frames, native_pixels
from medsam3.io.image import MedImage
from medsam3.io.video import dicom_frame_rate, video_image

MODALITY_MAP = {
    "CT": "ct", "MR": "mri", "US": "ultrasound", "IVUS": "ultrasound",
    "CR": "xray", "DX": "xray", "RF": "xray", "XA": "xray", "MG": "xray", "PX": "xray",
    "IO": "xray", "RG": "xray", "ES": "endoscopy", "OP": "fundus", "OPT": "oct",
    "SM": "histopathology", "XC": "dermoscopy", "GM": "microscopy", "PT": "pet", "NM": "nm",
}  # fmt: skip
PLANAR = {"xray", "ultrasound", "endoscopy", "fundus", "dermoscopy", "histopathology", "microscopy"}
VIDEO_CODES = {"US", "IVUS", "ES", "XA", "RF", "XC", "GM"}
TIMING_TAGS = ("FrameTime", "FrameTimeVector", "CineRate", "RecommendedDisplayFrameRate")
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
TRUNCATED_SLICES = "image file(s) without pixel data"  # in the warning of read_dicom


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` starts with the DICOM preamble ("DICM" at byte 128).

    Files named *.dcm / *.dicom / *.ima without a preamble count as DICOM too (old exports).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        if environment_cause(exc):  # an I/O or permission error must not drop a slice
            raise
        return False
    return head[128:132] == b"DICM" or (path.suffix.lower() in DICOM_SUFFIXES and len(head) > 0)


def map_modality(code: str | None) -> str | None:
    """Map a DICOM Modality code (CT, MR, US, ...) to medsam3's lower-case modality, or None."""
    return MODALITY_MAP.get(str(code or "").strip().upper())


def misses_slices(warnings: list[str] | tuple[str, ...]) -> bool:
    """True when a series' reader warnings say that slices are missing: a gap along the slice
    normal (``dicom_geometry.spacing_warnings``) or image files without pixel data."""
    return any(w.startswith(MISSING_SLICES) or TRUNCATED_SLICES in w for w in warnings)


def series_key(ds: Dataset) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a dataset ("" where missing)."""
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))


def has_frame_positions(ds: Dataset) -> bool:
    """True when every frame of a multi-frame dataset has a per-frame ImagePositionPatient."""
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    return bool(frames) and all("PlanePositionSequence" in f for f in frames)


def dicom_kind(ds: Dataset, n_files: int = 1) -> str:
    """Decide "image", "volume" or "video" for a series from one header.

    Args:
        ds: any dataset of the series (header only is enough).
        n_files: number of files in the series.

    Returns:
        "volume" for several single-frame files or frames with positions, "video" for a
        multi-frame file without positions that is a cine (ultrasound, endoscopy, timing tags),
        "image" for a single planar/colour frame, "volume" (one slice) otherwise.
    """
    if n_files > 1 or has_frame_positions(ds):
        return "volume"
    if n_frames(ds) > 1:
        cine = any(t in ds for t in TIMING_TAGS) or str(ds.get("Modality", "")) in VIDEO_CODES
        return "video" if cine else "volume"
    planar = map_modality(ds.get("Modality")) in PLANAR or int(ds.get("SamplesPerPixel", 1)) > 1
    has_geometry = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    return "image" if planar or not has_geometry else "volume"


def _ybr_to_rgb(arr: np.ndarray) -> np.ndarray:
    """YBR_FULL (JFIF YCbCr) frames (..., y, x, 3) uint8 -> RGB with Pillow (within 1 of
    pydicom's conversion)."""
    if arr.dtype != np.uint8:
        from pydicom.pixels import convert_color_space

        return convert_color_space(arr, "YBR_FULL", "RGB")
    frames = arr.reshape(-1, *arr.shape[-3:])
    out = np.stack([np.asarray(Image.fromarray(f, "YCbCr").convert("RGB")) for f in frames])
    return out.reshape(arr.shape)


def decode_pixels(ds: Dataset, where: Path | str, warnings: list[str]) -> np.ndarray:
    """Decode pixel data to an array: (frames, y, x[, 3]) for multi-frame, (y, x[, 3]) else.

    YBR is converted to RGB, PALETTE COLOR expanded to uint8 RGB, MONOCHROME1 inverted.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    ybr_full = photometric in ("YBR_FULL", "YBR_FULL_422")
    try:
        if ybr_full:  # Pillow's C colour conversion is ~4x faster than pydicom's numpy one
            ds.pixel_array_options(as_rgb=False)
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise ReadError(
            f"{where}: cannot decode pixel data ({name}: {scrub_identifiers(exc)}); "
            "the file may be truncated or use a codec without a decoder (try `gdcmconv --raw`)"
        ) from exc
    if ybr_full:
        arr = _ybr_to_rgb(arr)
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:
            arr = (arr >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
    elif photometric == "MONOCHROME1":
        top = (1 << int(ds.get("BitsStored", 16))) - 1 if arr.dtype.kind == "u" else arr.max()
        arr = (top + (arr.min() if arr.dtype.kind != "u" else 0) - arr).astype(arr.dtype)
        warnings.append("MONOCHROME1 pixels inverted to MONOCHROME2 (bright = dense)")
    if n_frames(ds) == 1 and arr.ndim == (4 if int(ds.get("SamplesPerPixel", 1)) > 1 else 3):
        arr = arr[0]
    return arr


def _image_2d(ds: Dataset, pixels: np.ndarray) -> dict:
    """Geometry of a single planar frame: 2D spacing (x, y), zero origin, identity direction."""
    plane = plane_from_single(ds, pixels)
    ps = plane.pixel_spacing or (1.0, 1.0)
    unit = "mm" if plane.pixel_spacing else "pixel"
    array = pixels
    if pixels.ndim == 2 and (plane.slope != 1 or plane.intercept != 0):
        array = rescale(pixels[None], np.array([plane.slope]), np.array([plane.intercept]))[0]
    return {
        "array": array,
        "spacing": (float(ps[1]), float(ps[0])),
        "origin": (0.0, 0.0),
        "direction": (1.0, 0.0, 0.0, 1.0),
        "warnings": [],
        "spacing_unit": unit,
    }


def _frames_in_file_order(ds: Dataset, pixels: np.ndarray) -> dict:
    """Volume fields for a multi-frame file without per-frame positions: frames stacked in
    file order, zero origin, identity direction, z spacing from SpacingBetweenSlices or
    SliceThickness (1 mm if neither), with a warning."""
    plane = plane_from_single(ds, pixels[0])
    ps = plane.pixel_spacing or (1.0, 1.0)
    unit = "mm" if plane.pixel_spacing else "pixel"
    thick = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    n = len(pixels)
    return {
        "array": rescale(pixels, np.full(n, plane.slope), np.full(n, plane.intercept)),
        "spacing": (float(ps[1]), float(ps[0]), thick),
        "origin": (0.0, 0.0, 0.0),
        "direction": tuple(np.eye(3).ravel().tolist()),
        "warnings": [
            "no per-frame positions: frames stacked in file order with identity direction "
            "and zero origin"
        ],
        "spacing_unit": unit,
    }


def read_single(ds: Dataset, where: str) -> tuple[str, dict]:
    """Read one DICOM file (single- or multi-frame) into (kind, MedImage fields)."""
    warnings: list[str] = []
    pixels = decode_pixels(ds, where, warnings)
    kind = dicom_kind(ds)
    if kind == "video":
        spacing = plane_from_single(ds, pixels[0]).pixel_spacing
        fields = video_image(pixels, dicom_frame_rate(ds), spacing)
    elif kind == "image":
        fields = _image_2d(ds, pixels)
    elif has_frame_positions(ds):
        frames = pixels if n_frames(ds) > 1 else pixels[None]
        fields = stack_planes(planes_from_enhanced(ds, frames), where)
    elif n_frames(ds) > 1:
        fields = _frames_in_file_order(ds, pixels)
    else:
        thick = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        fields = stack_planes([plane_from_single(ds, pixels)], where, thickness=thick)
    fields["warnings"] = warnings + fields["warnings"]
    return kind, fields


def read_dicom(paths: list[Path], where: str, ignored: int = 0) -> MedImage:
    """Read one DICOM series (a list of files) into a MedImage.

    Args:
        paths: the series' files (any order, any names).
        where: the source as the user named it (folder, file or .dcmlist), for messages.
        ignored: number of non-DICOM files skipped by the caller (reported as a warning).

    Returns:
        MedImage: volume (z, y, x) with LPS geometry for series / enhanced files, video
        (t, y, x[, 3]) for cine, image (y, x[, 3]) for planar frames; modality from the
        Modality tag (None if unknown), units "HU" for CT, source_digest over the file bytes.

    Raises:
        ReadError: unreadable files, several series, inconsistent slices.
    """
    loaded, skipped, truncated = load_images(paths, where)
    keys = {series_key(f.ds) for f in loaded}
    if len(keys) > 1:
        raise ReadError(
            f"{where}: found {len(keys)} DICOM series; point to one series folder, or run "
            f"`medsam3 discover {where} -o cohort.csv` to list each series as its own row"
        )
    first = loaded[0].ds
    if len(loaded) == 1:
        kind, fields = read_single(first, where)
    else:
        kind, fields = "volume", _read_stack(loaded, where)
    kinds = ((ignored, "non-DICOM"), (skipped, "non-image DICOM"))
    if ignored or skipped:
        listed = " and ".join(f"{n} {what}" for n, what in kinds if n)
        fields["warnings"].insert(0, f"ignored {listed} file(s) in the series folder")
    if truncated:
        fields["warnings"].insert(
            0,
            f"ignored {truncated} {TRUNCATED_SLICES} (truncated?); the series misses those "
            "slices: re-export it",
        )
    modality = map_modality(first.get("Modality"))
    region, region_source = region_of_dicom(first)
    return MedImage(
        kind=kind,
        modality=modality,
        body_region=region,
        body_region_source=region_source,
        units="HU" if modality == "ct" and kind == "volume" else None,
        source_digest=combine_digests(f.digest for f in loaded),
        **fields,
    )


def _read_stack(loaded: list[LoadedFile], where: str) -> dict:
    """Volume fields of a series of single-frame files (see ``stack_planes``)."""
    if any(n_frames(f.ds) > 1 for f in loaded):
        raise ReadError(
            f"{where}: the series holds several multi-frame files; read each file on its own "
            f"(`medsam3 discover {where}` lists them as separate rows)"
        )
    planes, warnings = [], []
    for f in loaded:
        if f.plane is not None:  # taken while loading
            planes.append(f.plane)
            continue
        pixels = native_pixels(f.ds)
        if pixels is None:
            pixels = decode_pixels(f.ds, where, warnings)
        planes.append(plane_from_single(f.ds, pixels))
    fields = stack_planes(planes, where)
    fields["warnings"] = sorted(set(warnings)) + fields["warnings"]
    return fields
