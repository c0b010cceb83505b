"""Loading the files of a DICOM series: each file's bytes are read once, hashed and parsed.

Files load in parallel threads: reading and sha256 release the GIL, so they overlap with
pydicom's parsing. Uncompressed pixel data stays a zero-copy view of the file's bytes, and a
single-frame native image's geometry (``dicom_geometry.Plane``) is taken in the same thread,
so that the reader only stacks the slices. Decoding compressed pixels and every check of the
series stay with the reader (``io.dicom``).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsam3.io.common import ReadError, bytes_digest, scrub_identifiers
from medsam3.io.dicom_geometry import Plane, plane_from_single

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_DATA = 0x7FE00010
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as little-endian bytes
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class LoadedFile:
    """One loaded image file: its dataset, sha256 digest and, for a single-frame native
    image, its Plane (None when the reader must decode the pixels)."""

    ds: Dataset
    digest: str
    plane: Plane | None = None


def load_dataset(path: Path, header_only: bool = False) -> tuple[Dataset, str]:
    """Read one DICOM file (bytes read once) and return it with its sha256 digest.

    Args:
        path: DICOM file.
        header_only: stop before the pixel data (the digest is then "").

    Returns:
        (dataset, sha256 hex digest of the file bytes); uncompressed pixel data is a view of
        the bytes (:func:`parse_dicom`).

    Raises:
        ReadError: the file is not readable DICOM.
    """
    try:
        if header_only:
            return pydicom.dcmread(path, stop_before_pixels=True, force=True), ""
        data = path.read_bytes()
        ds = parse_dicom(data)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ReadError(
            f"{path}: not a readable DICOM file ({scrub_identifiers(exc)}); "
            "re-export it or remove it"
        ) from exc
    meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if "SOPClassUID" not in ds and "Rows" not in ds and meta_class is None:
        raise ReadError(f"{path}: not a DICOM file (no SOP class, no image size); remove it")
    return ds, bytes_digest(data)


def parse_dicom(data: bytes) -> Dataset:
    """Parse a DICOM file's bytes; uncompressed pixel data is not copied.

    Args:
        data: the whole file.

    Returns:
        The dataset. Its PixelData is a read-only memoryview of ``data`` when the file is
        little endian and not deflated and the pixel data has a defined length (every native
        image); anything else (compressed, float pixels, big endian) is parsed by pydicom as
        usual. Elements after the pixel data (padding, signatures) are then not read.
    """
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in NATIVE_SYNTAXES or not ds.original_encoding[1]:
        return pydicom.dcmread(io.BytesIO(data), force=True)  # deflated: offsets not ours
    start = fp.tell()
    if start >= len(data):
        return ds  # the file has no pixel data (a DICOMDIR, a report)
    found = _pixel_view(ds, data, start)
    if found is None:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    vr, view = found  # a memoryview is not a value type pydicom validates: skip the check
    ds[PIXEL_DATA] = DataElement(PIXEL_DATA, vr, view, validation_mode=pydicom.config.IGNORE)
    return ds


def _pixel_view(ds: Dataset, data: bytes, start: int) -> tuple[str, memoryview] | None:
    """(VR, value) of the PixelData element at byte ``start`` of a little-endian file, or
    None when another element is there or the value is encapsulated or cut short."""
    if data[start : start + 4] != PIXEL_DATA_TAG:
        return None
    if ds.original_encoding[0]:  # implicit VR
        vr = "OW" if int(ds.get("BitsAllocated", 16)) > 8 else "OB"
        header, length = 8, int.from_bytes(data[start + 4 : start + 8], "little")
    else:
        vr = data[start + 4 : start + 6].decode("latin-1")
        header, length = 12, int.from_bytes(data[start + 8 : start + 12], "little")
    end = start + header + length
    if vr not in ("OB", "OW") or length == 0xFFFFFFFF or end > len(data):
        return None  # encapsulated or truncated: pydicom reads (or reports) it
    return vr, memoryview(data)[start + header : end]


def has_pixel_data(ds: Dataset) -> bool:
    """True when a dataset holds pixel data (an image, not a DICOMDIR or a report)."""
    return any(t in ds for t in PIXEL_TAGS)


def n_frames(ds: Dataset) -> int:
    """NumberOfFrames (1 when absent)."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def native_pixels(ds: Dataset) -> np.ndarray | None:
    """Read-only zero-copy (y, x) view of uncompressed little-endian MONOCHROME2 8/16-bit
    single-frame pixels whose stored bits fill the allocated bits; None for anything else
    (then ``io.dicom.decode_pixels`` is used)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    simple = (
        syntax in NATIVE_SYNTAXES
        and "PixelData" in ds
        and n_frames(ds) == 1
        and int(ds.get("SamplesPerPixel", 1)) == 1
        and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME2"
        and ds.get("BitsAllocated") in (8, 16)
        and ds.get("BitsStored") == ds.get("BitsAllocated")
    )
    if not simple:
        return None
    bits, signed = int(ds.BitsAllocated), int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if len(ds.PixelData) < rows * cols * dtype.itemsize:
        return None  # truncated: decode_pixels reports it
    return np.frombuffer(ds.PixelData, dtype, rows * cols).reshape(rows, cols)


def load_images(paths: list[Path], where: str) -> tuple[list[LoadedFile], int, int]:
    """Load every file in parallel threads; drop DICOM files without pixel data.

    Args:
        paths: the series' files.
        where: the source as the user named it, for messages.

    Returns:
        (the image files in the order of ``paths``, number of non-image DICOM files dropped
        (DICOMDIR, reports), number of image files (with Rows) without pixel data dropped:
        truncated slices).

    Raises:
        ReadError: a file is not readable DICOM (the first in ``paths`` order), or no file
            holds pixel data.
    """
    workers = min(4, os.cpu_count() or 1, len(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # reads and hashing overlap parsing
        loaded = list(pool.map(_load_file, paths))
    images = [f for f in loaded if has_pixel_data(f.ds)]
    if not images:
        raise ReadError(f"{where}: no DICOM file with pixel data; point to an image series")
    truncated = sum(1 for f in loaded if not has_pixel_data(f.ds) and "Rows" in f.ds)
    return images, len(loaded) - len(images) - truncated, truncated


def _load_file(path: Path) -> LoadedFile:
    """Load one file and, for a native single-frame image, its Plane."""
    ds, digest = load_dataset(path)
    return LoadedFile(ds, digest, _native_plane(ds))


def _native_plane(ds: Dataset) -> Plane | None:
    """The Plane of a single-frame image with native pixels, else None. A header that fails
    here (a malformed value) gives None too: the reader reads it again and reports it at the
    same point as any other error of the series."""
    try:
        if not has_pixel_data(ds) or n_frames(ds) != 1:
            return None
        pixels = native_pixels(ds)
        return None if pixels is None else plane_from_single(ds, pixels)
    except Exception:  # noqa: BLE001 - the reader's own call raises it in order
        return None
