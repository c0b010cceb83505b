"""Readers for SimpleITK formats (NIfTI, NRRD, MetaImage) and 2D images (PNG, JPEG, TIFF).

SimpleITK returns NIfTI geometry already converted to its LPS convention, so spacing, origin
and direction here mean the same as for DICOM. 2D images get spacing (1, 1): their files carry
no trustworthy physical size (a DPI is not a pixel spacing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError

from medsam3.io.common import (
    MAX_PIXELS_2D,
    ReadError,
    check_finite,
    environment_cause,
    scrub_identifiers,
)
from medsam3.io.image import MedImage

SITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GRAY_MODES = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16,
               "I": np.int32, "F": np.float32}  # fmt: skip


def suffix_of(path: Path) -> str:
    """Lower-case file suffix, with ".nii.gz" kept whole."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_sitk(path: Path) -> MedImage:
    """Read a NIfTI / NRRD / MetaImage file with SimpleITK.

    Args:
        path: .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd file.

    Returns:
        MedImage: 3D -> "volume" (z, y, x), 2D -> "image" (y, x); vector pixels become a last
        channel axis; spacing/origin/direction as SimpleITK reports them (LPS, x-y-z order).

    Raises:
        ReadError: unreadable file, a 4D / 1D image, or a NIfTI header with a zero-size axis.
    """
    if suffix_of(path) in (".nii", ".nii.gz"):
        _check_nifti_shape(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(
            f"{path}: SimpleITK cannot read it "
            f"({scrub_identifiers(exc.args[0].splitlines()[-1])}); "
            "check that the file is complete and its extension matches its format"
        ) from exc
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise ReadError(
            f"{path}: {dim}D image; give a 2D image or 3D volume (split 4D series into 3D files)"
        )
    if suffix_of(path) in (".nii", ".nii.gz") and "float" in img.GetPixelIDTypeAsString():
        _check_nifti_nans(path)
    return MedImage.from_sitk(img, kind="volume" if dim == 3 else "image")


def _check_nifti_shape(path: Path) -> None:
    """Raise ReadError for a NIfTI whose header gives an axis of size 0.

    SimpleITK reads such a file as one slice of zeros, so the header is read with nibabel first.
    """
    import nibabel as nib

    try:
        shape = nib.load(path).shape
    except Exception as exc:  # noqa: BLE001 - unreadable headers are SimpleITK's to report
        if environment_cause(exc):
            raise
        return
    if 0 in shape:
        raise ReadError(
            f"{path}: the NIfTI header gives shape {shape}, with no voxels; re-export it"
        )


def _check_nifti_nans(path: Path) -> None:
    """Raise ReadError for NaN voxels in a float NIfTI.

    SimpleITK's NIfTI reader silently turns NaN into 0, so the stored values are checked with
    nibabel (a second read, done for float NIfTI files only).
    """
    import nibabel as nib

    check_finite(np.asanyarray(nib.load(path).dataobj), str(path))


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Grayscale modes -> (y, x) in their own dtype; everything else -> (y, x, 3) uint8 RGB."""
    if im.mode in _GRAY_MODES:
        return np.asarray(im, dtype=_GRAY_MODES[im.mode])
    if im.mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


_TOO_LARGE = (
    f"medsam3 segments 2D images of at most {MAX_PIXELS_2D:,} pixels (8192 x 8192); "
    "downsample or tile it first"
)


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse an image over MAX_PIXELS_2D before its pixels are decoded."""
    if width * height > MAX_PIXELS_2D:
        raise ReadError(f"{path}: image of {width} x {height} pixels is too large; {_TOO_LARGE}")


def read_2d(path: Path) -> MedImage:
    """Read a PNG / JPEG / TIFF / BMP image with Pillow.

    Args:
        path: the image file.

    Returns:
        MedImage of kind "image": grayscale -> (y, x) (uint8, uint16, int32 or float32 as
        stored), colour -> (y, x, 3) uint8 RGB with alpha dropped; spacing (1, 1), zero
        origin, identity direction, spacing_unit "pixel". Multi-page TIFFs: the first page,
        with a warning.

    Raises:
        ReadError: not a decodable image.
    """
    warnings = []
    try:
        with Image.open(path) as im:
            _check_size(path, *im.size)
            if getattr(im, "n_frames", 1) > 1:
                warnings.append(f"multi-page image: only the first of {im.n_frames} pages read")
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                warnings.append("alpha channel dropped")
            array = _pil_to_array(im)
    except ReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ReadError(f"{path}: {scrub_identifiers(exc)} {_TOO_LARGE}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ReadError(
            f"{path}: not a readable image ({scrub_identifiers(exc)}); re-save it as PNG or TIFF"
        ) from exc
    return MedImage(
        array=np.ascontiguousarray(array),
        kind="image",
        spacing=(1.0, 1.0),
        origin=(0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 1.0),
        warnings=warnings,
        spacing_unit="pixel",
    )
