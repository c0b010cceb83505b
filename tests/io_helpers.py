"""Test-data generators for the io tests: DICOM series, enhanced and cine DICOM from arrays.

All files are written with pydicom so that the readers under test (our code and SimpleITK/GDCM)
are independent of the writer. Geometry arguments follow SimpleITK's (x, y, z) convention.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

# Identifiers that must never leak into any output (privacy tests search for these strings).
PATIENT = {
    "PatientName": "Doe^Janet^Secret",
    "PatientID": "PID-73519-XZ",
    "PatientBirthDate": "19520417",
    "AccessionNumber": "ACC998877",
}


def oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    """A proper rotation matrix (3, 3) about an oblique axis; columns are the x, y, z axes."""
    a = np.deg2rad(angle_deg)
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _base_dataset(sop_class: str, modality: str, study_uid: str, series_uid: str) -> Dataset:
    """A dataset with file meta, patient identifiers and study/series UIDs filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = "20210305"
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    """Attach an int16/uint16/uint8 pixel array (frames, y, x[, c]) or (y, x) to ``ds``."""
    rgb = stored.ndim == 4 or (
        stored.ndim == 3 and stored.shape[-1] == 3 and stored.dtype == np.uint8
    )
    ds.Rows, ds.Columns = stored.shape[-3:-1] if rgb else stored.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def write_dicom_series(
    folder: Path,
    stored: np.ndarray,
    spacing: tuple[float, float, float] = (0.7, 0.9, 2.5),
    origin: tuple[float, float, float] = (-20.0, 15.0, 40.0),
    direction: np.ndarray | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CT",
    shuffle: bool = True,
    z_offsets: list[float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    tilt_deg: float = 0.0,
) -> list[Path]:
    """Write a single-frame DICOM series, one file per slice, random names in random order.

    Args:
        folder: output folder (created).
        stored: stored values (z, y, x), int16 or uint16; world value = stored * slope + intercept.
        spacing: (x, y, z) voxel spacing in mm.
        origin: LPS position of voxel (0, 0, 0).
        direction: (3, 3) matrix whose columns are the x, y, z axis directions (identity if None).
        slope, intercept: RescaleSlope / RescaleIntercept.
        modality: DICOM Modality.
        shuffle: random file names and InstanceNumbers that do not follow the slice order.
        z_offsets: per-slice offsets along z in mm (default k * spacing[2]) to make gaps.
        study_uid, series_uid: UIDs (generated if None).
        tilt_deg: gantry tilt: each slice is shifted along y by z * tan(tilt).

    Returns:
        The written file paths, in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    zs = z_offsets if z_offsets is not None else [k * spacing[2] for k in range(len(stored))]
    numbers = list(range(1, len(stored) + 1))
    rng = random.Random(len(stored))
    if shuffle:
        rng.shuffle(numbers)
    paths = []
    for k, plane in enumerate(stored):
        ds = _base_dataset(CTImageStorage, modality, study_uid, series_uid)
        shift = zs[k] * np.tan(np.deg2rad(tilt_deg))
        pos = np.asarray(origin) + d[:, 2] * zs[k] + d[:, 1] * shift
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.InstanceNumber = numbers[k]
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        _set_pixels(ds, plane)
        name = f"{rng.getrandbits(40):010x}" + (".dcm" if k % 2 else "")
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: Path,
    stored: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.6, 3.0),
    origin: tuple[float, float, float] = (10.0, -5.0, 7.0),
    direction: np.ndarray | None = None,
    slope: float = 1.0,
    intercept: float = -1024.0,
    frame_order: list[int] | None = None,
) -> None:
    """Write an enhanced (multi-frame) CT with per-frame positions, frames in ``frame_order``.

    Args:
        path: output file.
        stored: stored values (z, y, x) int16 in true slice order.
        spacing, origin, direction: geometry as in ``write_dicom_series``.
        slope, intercept: shared Pixel Value Transformation.
        frame_order: slice index stored in each frame (default reversed order).
    """
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    order = frame_order if frame_order is not None else list(range(len(stored)))[::-1]
    ds = _base_dataset(EnhancedCTImageStorage, "CT", generate_uid(), generate_uid())
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    measures.SliceThickness = f"{spacing[2]:.6f}"
    transform = Dataset()
    transform.RescaleSlope = f"{slope:g}"
    transform.RescaleIntercept = f"{intercept:g}"
    transform.RescaleType = "HU"
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [
            f"{v:.6f}" for v in np.asarray(origin) + d[:, 2] * k * spacing[2]
        ]
        item.PlanePositionSequence = [pos]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    _set_pixels(ds, stored[order])
    ds.save_as(path, enforce_file_format=True)


def write_us_cine(
    path: Path, frames: np.ndarray, frame_time_ms: float = 40.0, series_uid: str | None = None
) -> None:
    """Write a multi-frame ultrasound cine (frames (t, y, x[, 3]) uint8) with FrameTime.

    Args:
        path: output file.
        frames: uint8 frames (t, y, x) grayscale or (t, y, x, 3) RGB.
        frame_time_ms: FrameTime in milliseconds (frame rate = 1000 / frame_time_ms).
        series_uid: SeriesInstanceUID (and StudyInstanceUID + ".1"); generated if None.
    """
    series_uid = series_uid or generate_uid()
    study_uid = series_uid[:60] + ".1"
    ds = _base_dataset(UltrasoundMultiFrameImageStorage, "US", study_uid, series_uid)
    ds.NumberOfFrames = len(frames)
    ds.FrameTime = f"{frame_time_ms:g}"
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    _set_pixels(ds, frames)
    ds.save_as(path, enforce_file_format=True)


# pydicom's real 5-slice CT series (CT5N: 16 x 16 px, slices 2.5 mm apart), in file-name order.
REAL_CT_SERIES = Path(pydicom.data.get_testdata_file("2392")).parent
# Identifiers of a made-up patient, as they appear in a hospital's folder names and tags.
PHI_TAGS = {
    "PatientName": "Doe^John",
    "PatientID": "PHI12345",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC98765",
}
PHI_STRINGS = ["DOE_JOHN", "Doe^John", "PHI12345", "19700101", "ACC98765"]


def copy_real_ct_series(
    folder: Path,
    tags: dict | None = None,
    drop: tuple[str, ...] = (),
    cut: int | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Copy pydicom's real CT series into ``folder``, changing only the named tags.

    Args:
        folder: destination (created).
        tags: attributes to set on every slice (e.g. ``PHI_TAGS``).
        drop: attributes to delete from every slice (e.g. "PatientSex").
        cut: index of a slice (file-name order; 2 is the middle one) whose file is cut just
            before its pixel data, as an interrupted copy leaves it.
        series_uid: a new SeriesInstanceUID for every slice (another series of the study).

    Returns:
        The copied files, in file-name order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, src in enumerate(sorted(p for p in REAL_CT_SERIES.iterdir() if p.is_file())):
        ds = pydicom.dcmread(src)
        for key, value in (tags or {}).items():
            setattr(ds, key, value)
        for key in drop:
            if key in ds:
                delattr(ds, key)
        if series_uid:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path)
        if k == cut:
            raw = path.read_bytes()
            path.write_bytes(raw[: raw.rfind(b"\xe0\x7f\x10\x00")])  # (7FE0,0010) PixelData
        paths.append(path)
    return paths
