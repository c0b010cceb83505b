"""One entry point for every source: ``read_source`` dispatches by content and extension.

Sources: a DICOM series folder (non-DICOM files in it are ignored with a warning), a folder of
2D frame images (read as one video, fps from a ``video.json`` beside them), a
``.dcmlist`` file listing DICOM files (written by ``medsam3 discover``), or a single file:
DICOM (detected by its "DICM" preamble whatever its name), NIfTI, NRRD, MetaImage, PNG, JPEG,
TIFF, BMP, or a video (mp4, avi, mov, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam3.io.body_region import fill_body_region
from medsam3.io.common import (
    ReadError,
    check_exists,
    check_extent,
    check_finite,
    combine_digests,
    file_digest,
)
from medsam3.io.dicom import is_dicom_file, map_modality, read_dicom
from medsam3.io.formats import IMAGE_SUFFIXES, SITK_SUFFIXES, read_2d, read_sitk, suffix_of
from medsam3.io.image import MedImage
from medsam3.io.video import VIDEO_SUFFIXES, read_frame_folder, read_video
from medsam3.types import PathLikeStr

__all__ = [
    "ReadError",
    "read_source",
    "read_dcmlist",
    "dicom_files",
    "guess_modality",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = (".dcm", ".dcmlist", *SITK_SUFFIXES, *IMAGE_SUFFIXES, *sorted(VIDEO_SUFFIXES))


def read_source(path: PathLikeStr, modality: str | None = None) -> MedImage:
    """Read any supported source into a MedImage with full geometry and provenance.

    Args:
        path: a file, a DICOM series folder, a folder of video frames (PNG/JPEG/TIFF, natural
            name order), or a ``.dcmlist`` file (one DICOM path per line, absolute or relative
            to the list's folder).
        modality: modality to use when the source does not say (DICOM's Modality tag wins);
            lower-case names ("ct", "mri", ...) or DICOM codes ("CT", "MR", ...).

    Returns:
        MedImage in SimpleITK voxel order ((z, y, x) volume, (t, y, x[, 3]) video, (y, x[, 3])
        image) with spacing/origin/direction in SimpleITK (x, y, z) LPS convention, modality,
        units ("HU" for CT volumes with signed or float voxels), frame_rate (video), warnings,
        source_digest (sha256 over the source files' bytes: one file's digest, or a digest
        of the sorted per-file digests), modality_source ("dicom", "cohort" or "guess"),
        spacing_unit ("pixel" when the source has no physical spacing) and body_region
        (``io.body_region``: DICOM header, descriptions, or the field of view of CT/MR).

    Raises:
        ReadError: missing/empty/corrupt input, several series, no voxels (a zero-size axis),
            spacing that is not positive, NaN voxels, unknown format.
    """
    path = Path(path)
    check_exists(path)
    if path.is_dir():
        image = _read_folder(path)
    elif suffix_of(path) == ".dcmlist":
        image = read_dicom(read_dcmlist(path), str(path))
    else:
        image = _read_file(path)
    check_extent(image.spatial_shape, image.spacing, str(path))
    check_finite(image.array, str(path))
    _fill_modality(image, modality)
    fill_body_region(image)
    return image


def dicom_files(path: PathLikeStr) -> list[Path]:
    """The DICOM files that :func:`read_source` reads for a source, in sorted order.

    DICOM-SEG export references exactly these (its source series is the one that was read).

    Args:
        path: a series folder (top level only: subfolders are not read), a ``.dcmlist`` or
            one file.

    Returns:
        The DICOM files by content (non-DICOM files of a folder left out); [] for a source
        that is not DICOM. Files without pixel data (DICOMDIR, reports) are still listed: the
        reader drops them after reading their headers.
    """
    path = Path(path)
    if path.is_dir():
        return [p for p in sorted(path.iterdir()) if p.is_file() and is_dicom_file(p)]
    if suffix_of(path) == ".dcmlist":
        return read_dcmlist(path)
    return [path] if path.is_file() and is_dicom_file(path) else []


def read_dcmlist(path: Path) -> list[Path]:
    """Parse a ``.dcmlist`` file: one DICOM path per line ("#" comments and blanks skipped).

    Args:
        path: the list file.

    Returns:
        The listed paths (relative entries resolved against the list's folder).

    Raises:
        ReadError: the list is empty or names files that do not exist.
    """
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    paths = [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]
    if not paths:
        raise ReadError(f"{path}: the list names no files; rerun `medsam3 discover`")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReadError(
            f"{path}: {len(missing)} listed file(s) do not exist (first: {missing[0]}); "
            "rerun `medsam3 discover` on the data folder"
        )
    return paths


def _read_folder(folder: Path) -> MedImage:
    """Read the DICOM series in ``folder`` (top level only), skipping non-DICOM files; a folder
    without DICOM files but with 2D images is read as the frames of one video."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    dicom = dicom_files(folder)
    frames = [p for p in files if suffix_of(p) in IMAGE_SUFFIXES]
    if not dicom and frames:
        return read_frame_folder(folder, frames)
    if not dicom:
        sub = " (it has subfolders)" if any(p.is_dir() for p in folder.iterdir()) else ""
        raise ReadError(
            f"{folder}: no DICOM files in this folder{sub}; point to a series folder or run "
            f"`medsam3 discover {folder} -o cohort.csv` to find the series"
        )
    return read_dicom(dicom, str(folder), ignored=len(files) - len(dicom))


def _sidecar_files(path: Path) -> list[Path]:
    """The data file named by a .mhd / .nhdr header, if it is a separate file."""
    if suffix_of(path) not in (".mhd", ".nhdr"):
        return []
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=" if suffix_of(path) == ".mhd" else ":")
        if key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            data = path.parent / value.strip()
            return [data] if data.is_file() else []
    return []


def _read_file(path: Path) -> MedImage:
    """Read one non-folder source by content (DICOM preamble) or extension."""
    suffix = suffix_of(path)
    if is_dicom_file(path):
        return read_dicom([path], str(path))
    if suffix in SITK_SUFFIXES:
        image = read_sitk(path)
    elif suffix in IMAGE_SUFFIXES:
        image = read_2d(path)
    elif suffix in VIDEO_SUFFIXES:
        image = read_video(path)
    else:
        raise ReadError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; supported: DICOM, "
            f"{', '.join(SUPPORTED_SUFFIXES[2:])} (convert it, e.g. to NIfTI or PNG)"
        )
    digests = [file_digest(p) for p in [path, *_sidecar_files(path)]]

    image.source_digest = combine_digests(digests) if len(digests) > 1 else digests[0]
    return image


def guess_modality(image: MedImage) -> str:
    """Guess a modality from the pixels: CT (values below -500 HU) or MRI for volumes,
    ultrasound (grey-looking) or endoscopy for video, xray (grey) or dermoscopy (colour) for
    2D images. A weak prior only; the caller records a warning."""
    arr = image.array
    if image.kind == "volume":
        return "ct" if arr.size and float(arr.min()) < -500 else "mri"
    grey = not image.is_rgb or _looks_grey(arr)
    if image.kind == "video":
        return "ultrasound" if grey else "endoscopy"
    return "xray" if grey else "dermoscopy"


def _looks_grey(arr: np.ndarray) -> bool:
    """True when the colour channels of a subsample are (nearly) equal."""
    sample = arr.reshape(-1, arr.shape[-1])[:: max(1, arr.size // (3 * 65536))].astype(np.int16)
    return bool(np.abs(sample - sample[:, :1]).max(initial=0) <= 8)


def _fill_modality(image: MedImage, modality: str | None) -> None:
    """Set modality (DICOM tag > argument > guess), its source and CT units, recording
    warnings."""
    given = None  # non-strings (e.g. NaN from an empty CSV cell) count as not given
    if isinstance(modality, str) and modality.strip():
        given = map_modality(modality) or modality.strip().lower()
    if image.modality:
        image.modality_source = "dicom"
        if given and given != image.modality:
            image.warnings.append(
                f"modality {given!r} given but the DICOM header says {image.modality!r}; "
                "using the header"
            )
    elif given:
        image.modality, image.modality_source = given, "cohort"
    else:
        image.modality, image.modality_source = guess_modality(image), "guess"
        image.warnings.append(
            f"modality guessed as {image.modality!r}; set the cohort table's modality column "
            "to override"
        )
    signed = image.array.dtype.kind in "if"  # unsigned CT data is windowed or offset, not HU
    if image.modality == "ct" and image.units is None and image.kind == "volume" and signed:
        image.units = "HU"
