"""The fast DICOM read path: zero-copy pixel data, planes taken while loading, and the
one-pass stack + rescale."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from io_helpers import write_dicom_series
from pydicom.data import get_testdata_file

from medsam3.io.dicom_geometry import rescale, stack_rescaled
from medsam3.io.dicom_load import load_images, parse_dicom
from medsam3.io.read import read_source

NATIVE = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm", "emri_small.dcm"]
NATIVE += ["SC_rgb.dcm", "OBXXXX1A.dcm", "liver.dcm"]
PARSED = ["MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]
PARSED += ["image_dfl.dcm"]  # big endian, compressed, deflated: pydicom reads them whole


@pytest.mark.filterwarnings("ignore:The pixel data is .* bytes long")
@pytest.mark.parametrize("name", NATIVE + PARSED)
def test_parse_dicom_gives_pydicoms_dataset_and_pixels(name):
    data = Path(get_testdata_file(name)).read_bytes()
    ref = pydicom.dcmread(get_testdata_file(name), force=True)
    ds = parse_dicom(data)
    assert isinstance(ds.PixelData, memoryview) == (name in NATIVE)
    if name in NATIVE:
        assert ds.PixelData.obj is data  # a view of the file's bytes, not a copy
    assert bytes(ds.PixelData) == ref.PixelData
    header = [e.tag for e in ref if e.tag < 0x7FE00010]
    assert [e.tag for e in ds if e.tag < 0x7FE00010] == header
    assert all(ds[t].value == ref[t].value for t in header if ref[t].VR != "SQ")
    np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)


def test_parse_dicom_leaves_truncated_and_pixel_free_files_to_pydicom():
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    cut = parse_dicom(data[: len(data) // 2])
    assert not isinstance(cut.get("PixelData"), memoryview)
    header_only = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, header_only, enforce_file_format=True)
    assert "PixelData" not in parse_dicom(buffer.getvalue())


def _frames(dtype, lo: int, hi: int, n: int = 5) -> list[np.ndarray]:
    """Read-only frames (as views of file bytes are) of random stored values in [lo, hi]."""
    rng = np.random.default_rng(n)
    values = rng.integers(lo, hi, (n, 6, 7), endpoint=True).astype(dtype)
    return [np.frombuffer(v.tobytes(), dtype).reshape(6, 7) for v in values]


@pytest.mark.parametrize(
    "frames, slopes, intercepts, dtype",
    [
        (_frames(np.int16, 0, 4095), [1] * 5, [-1024] * 5, np.int16),
        (_frames(np.uint16, 0, 4095), [2] * 5, [-1024] * 5, np.int16),
        (_frames(np.uint16, 0, 65535), [1] * 5, [-1024] * 5, np.float32),  # beyond int16
        (_frames(np.int16, -3000, 3000), [1, 2, 1, 3, 1], [0, -5, 7, 0, 1], np.int16),
        (_frames(np.int16, 0, 4095), [0.5] * 5, [-3.25] * 5, np.float32),
        (_frames(np.uint8, 0, 255), [1] * 5, [0] * 5, np.uint8),  # no rescale
        (_frames(np.int16, 20000, 30000), [2] * 5, [0] * 5, np.float32),  # product overflows
    ],
)
def test_stack_rescaled_is_rescale_of_the_stack(frames, slopes, intercepts, dtype):
    slopes, intercepts = np.asarray(slopes, float), np.asarray(intercepts, float)
    out = stack_rescaled(frames, slopes, intercepts)
    ref = rescale(np.stack(frames), slopes, intercepts)
    assert out.dtype == ref.dtype == dtype and out.flags.writeable
    np.testing.assert_array_equal(out, ref)
    exact = np.stack(frames) * slopes[:, None, None] + intercepts[:, None, None]
    np.testing.assert_allclose(out, exact, rtol=1e-6)


def test_native_slices_are_loaded_with_their_plane(tmp_path):
    paths = write_dicom_series(
        tmp_path / "s", np.arange(4 * 6 * 7, dtype=np.int16).reshape(4, 6, 7)
    )
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), tmp_path / "s" / "j2k.dcm")
    loaded, skipped, truncated = load_images([*paths, tmp_path / "s" / "j2k.dcm"], "s")
    assert (skipped, truncated) == (0, 0)
    assert [f.plane is not None for f in loaded] == [True] * 4 + [False]  # j2k: decoded later
    assert all(f.plane.pixels.base is not None for f in loaded[:4])  # views of the file bytes


def test_a_malformed_slice_header_is_reported_by_the_reader(tmp_path):
    paths = write_dicom_series(tmp_path / "s", np.zeros((4, 6, 7), np.int16))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data.replace(b"15.000000", b"1x.000000"))  # its position's y
    assert load_images(paths, "s")[0][1].plane is None  # left to the reader, which raises
    with pytest.raises(ValueError, match="1x.000000"):
        read_source(tmp_path / "s")
