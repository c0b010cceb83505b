"""DICOM reading: geometry against SimpleITK, enhanced/cine/compressed files, bad input, privacy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_helpers import (
    PATIENT,
    REAL_CT_SERIES,
    copy_real_ct_series,
    oblique_direction,
    write_dicom_series,
    write_enhanced_ct,
    write_us_cine,
)
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array

from medsam3.io.dicom import misses_slices
from medsam3.io.read import ReadError, dicom_files, read_source
from medsam3.io.zarr_store import read_study, write_study
from medsam3.pipeline.discover import discover

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-20.0, 15.0, 40.0)


def sitk_series(folder: Path) -> sitk.Image:
    """Read a series folder with SimpleITK's ImageSeriesReader (GDCM sorting)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_matches_sitk(image, ref: sitk.Image) -> None:
    """Voxel-for-voxel and attribute-for-attribute comparison with a SimpleITK image."""
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(image.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.direction, ref.GetDirection(), atol=1e-6)


@pytest.fixture(scope="module")
def oblique_ct(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """12 shuffled, randomly named CT slices (40 x 48), oblique, slope 2 / intercept -1024,
    with a text file mixed in; returns (folder, expected HU array (z, y, x))."""
    folder = tmp_path_factory.mktemp("oblique") / "series"
    rng = np.random.default_rng(7)
    stored = rng.integers(-500, 1500, (12, 40, 48)).astype(np.int16)
    write_dicom_series(folder, stored, SPACING, ORIGIN, oblique_direction(), 2.0, -1024.0)
    (folder / "notes.txt").write_text("not a DICOM file")
    return folder, stored.astype(np.int32) * 2 - 1024


def test_oblique_series_matches_simpleitk_and_survives_zarr(oblique_ct, tmp_path):
    folder, expected = oblique_ct
    image = read_source(folder)
    ref = sitk_series(folder)
    assert image.kind == "volume" and image.modality == "ct" and image.units == "HU"
    assert image.array.dtype == np.int16  # slope 2 / intercept -1024 is exact in int16
    np.testing.assert_array_equal(image.array, expected)
    assert_matches_sitk(image, ref)
    np.testing.assert_allclose(image.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(np.reshape(image.direction, (3, 3)), oblique_direction(), atol=1e-6)
    assert any("1 non-DICOM" in w for w in image.warnings)
    assert len(image.source_digest) == 64
    back = read_study(write_study(tmp_path / "s.zarr", image))
    assert_matches_sitk(back, ref)
    assert back.to_sitk().GetDirection() == pytest.approx(ref.GetDirection(), abs=1e-6)


def test_non_integral_rescale_gives_float32(tmp_path):
    stored = np.arange(3 * 8 * 10, dtype=np.int16).reshape(3, 8, 10)
    write_dicom_series(tmp_path / "s", stored, slope=0.5, intercept=-3.25)
    image = read_source(tmp_path / "s")
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, stored * 0.5 - 3.25)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(sitk_series(tmp_path / "s")))


@pytest.mark.parametrize(
    "offsets, expected",
    [
        ([0, 2, 4, 6, 12, 14, 16], "missing slices"),
        ([0, 2, 4.4, 6, 8, 10, 12], "irregular slice spacing"),
    ],
)
def test_spacing_problems_are_reported(tmp_path, offsets, expected):
    stored = np.zeros((len(offsets), 6, 7), np.int16)
    write_dicom_series(tmp_path / "s", stored, z_offsets=offsets)
    warnings = read_source(tmp_path / "s").warnings
    assert any(w.startswith(expected) for w in warnings), warnings


def test_regular_series_has_no_geometry_warnings(oblique_ct):
    warnings = read_source(oblique_ct[0]).warnings
    assert not any("spacing" in w or "tilt" in w or "missing" in w for w in warnings)


def test_gantry_tilt_reported_and_slices_at_their_true_depth(tmp_path):
    stored = np.random.default_rng(1).integers(0, 99, (5, 10, 12)).astype(np.int16)
    paths = write_dicom_series(tmp_path / "s", stored, tilt_deg=15.0, shuffle=False)
    image = read_source(tmp_path / "s")
    assert any(w.startswith("gantry tilt of 15.00") for w in image.warnings)
    ref = sitk_series(tmp_path / "s")
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(image.direction, ref.GetDirection(), atol=1e-6)  # orthonormal
    # SimpleITK's z spacing is |last - first| / (n - 1); ours is the gap along the normal
    assert image.spacing[2] == pytest.approx(ref.GetSpacing()[2] * np.cos(np.deg2rad(15.0)))
    img = image.to_sitk()
    normal = np.reshape(image.direction, (3, 3))[:, 2]
    for k, path in enumerate(paths):  # every slice lies at its DICOM depth along the normal
        ipp = np.array([float(v) for v in pydicom.dcmread(path).ImagePositionPatient])
        voxel = np.array(img.TransformIndexToPhysicalPoint((0, 0, k)))
        assert voxel @ normal == pytest.approx(ipp @ normal, abs=1e-4)


def test_enhanced_ct_frames_sorted_by_position(tmp_path):
    stored = np.random.default_rng(2).integers(0, 2000, (5, 12, 14)).astype(np.int16)
    write_enhanced_ct(tmp_path / "e.dcm", stored, frame_order=[3, 0, 4, 1, 2])
    image = read_source(tmp_path / "e.dcm")
    assert image.kind == "volume" and image.units == "HU"
    np.testing.assert_array_equal(image.array, stored.astype(np.int32) - 1024)
    np.testing.assert_allclose(image.spacing, (0.8, 0.6, 3.0), atol=1e-6)
    np.testing.assert_allclose(image.origin, (10.0, -5.0, 7.0), atol=1e-6)
    write_enhanced_ct(tmp_path / "one.dcm", stored[:1])
    single = read_source(tmp_path / "one.dcm")
    assert single.kind == "volume" and single.array.shape == (1, 12, 14)


def test_pydicom_enhanced_ct_matches_simpleitk_in_physical_space():
    path = get_testdata_file("eCT_Supplemental.dcm")
    image, ref = read_source(path), sitk.ReadImage(path)
    ours = sitk.DICOMOrient(image.to_sitk(), "LPS")
    theirs = sitk.DICOMOrient(ref, "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-5)


@pytest.mark.parametrize("name, modality", [("CT_small.dcm", "ct"), ("MR_small.dcm", "mri")])
def test_pydicom_single_slices_match_simpleitk(name, modality):
    path = get_testdata_file(name)
    image, ref = read_source(path), sitk.ReadImage(path)
    assert image.kind == "volume" and image.array.shape == (1, *ref.GetSize()[1::-1])
    assert image.modality == modality and image.units == ("HU" if modality == "ct" else None)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(image.spacing[:2], ref.GetSpacing()[:2], atol=1e-6)
    np.testing.assert_allclose(image.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.direction, ref.GetDirection(), atol=1e-6)


def test_echocardiography_cine_reads_as_video():
    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    image = read_source(path)
    assert image.kind == "video" and image.modality == "ultrasound"
    assert image.array.shape == (120, 480, 640, 3) and image.array.dtype == np.uint8
    assert image.frame_rate == pytest.approx(1000 / 33.333, rel=1e-4)
    for k in (0, 77):  # YBR -> RGB agrees with pydicom's own conversion within rounding
        ref = pixel_array(path, index=k).astype(int)
        assert np.abs(image.array[k].astype(int) - ref).max() <= 1


def test_synthetic_cine_exact_frames_and_rate(tmp_path):
    frames = np.random.default_rng(3).integers(0, 255, (6, 16, 20)).astype(np.uint8)
    write_us_cine(tmp_path / "cine.dcm", frames, frame_time_ms=40.0)
    image = read_source(tmp_path / "cine.dcm")
    assert image.kind == "video" and image.frame_rate == pytest.approx(25.0)
    np.testing.assert_array_equal(image.array, frames)


@pytest.mark.parametrize(
    "compressed, raw",
    [
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("emri_small_RLE.dcm", "emri_small.dcm"),
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),
    ],
)
def test_compressed_transfer_syntaxes_decode_losslessly(compressed, raw):
    a, b = read_source(get_testdata_file(compressed)), read_source(get_testdata_file(raw))
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.array, b.array)


def test_multiframe_without_positions_stacks_in_file_order_with_warning():
    image = read_source(get_testdata_file("emri_small.dcm"))
    assert image.kind == "volume" and image.array.shape == (10, 64, 64)
    assert image.spacing == (1.0, 1.0, 1.2)  # no pixel spacing; SpacingBetweenSlices 1.2
    assert any(w.startswith("no per-frame positions") for w in image.warnings)


def test_truncated_dicom_raises(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="cut.dcm: cannot decode pixel data"):
        read_source(tmp_path / "cut.dcm")


def test_garbage_named_dcm_raises(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ReadError, match="junk.dcm"):
        read_source(tmp_path / "junk.dcm")


def test_empty_and_missing_paths_raise(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ReadError, match="empty file"):
        read_source(tmp_path / "empty.dcm")
    with pytest.raises(ReadError, match="does not exist"):
        read_source(tmp_path / "nope")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("x")
    with pytest.raises(ReadError, match="no DICOM files"):
        read_source(tmp_path / "dir")


def test_two_series_in_one_folder_raise(tmp_path):
    write_dicom_series(tmp_path / "mix", np.zeros((3, 4, 5), np.int16))
    write_dicom_series(tmp_path / "mix", np.ones((2, 4, 5), np.int16))
    with pytest.raises(ReadError, match=r"found 2 DICOM series.*medsam3 discover"):
        read_source(tmp_path / "mix")


def test_duplicate_positions_raise(tmp_path):
    write_dicom_series(tmp_path / "d", np.zeros((3, 4, 5), np.int16), z_offsets=[0, 2, 2])
    with pytest.raises(ReadError, match="share a position"):
        read_source(tmp_path / "d")


def _identifiers(folder: Path) -> set[str]:
    """Every identifier string carried by the DICOM files in ``folder``."""
    found = set(PATIENT.values())
    for path in folder.iterdir():
        if path.suffix != ".txt":
            ds = pydicom.dcmread(path)
            for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate"):
                found.add(str(ds.get(key)))
            found.add(str(ds.FrameOfReferenceUID))
    found |= {"Doe", "Janet", "73519"}
    return found


def test_no_identifiers_in_warnings_store_table_or_errors(tmp_path):
    folder = tmp_path / "cohort" / "p1"
    write_dicom_series(folder, np.zeros((6, 8, 9), np.int16), z_offsets=[0, 2, 4, 10, 12, 14])
    (folder / "notes.txt").write_text("x")
    secrets = _identifiers(folder)
    image = read_source(folder)
    assert image.warnings  # missing slices + ignored file: something to leak into
    store = write_study(tmp_path / "s.zarr", image, {"study_id": "s-1"})
    metadata = "".join(p.read_text() for p in store.rglob("zarr.json"))
    table = discover(tmp_path / "cohort", list_dir=tmp_path / "lists")
    write_dicom_series(folder, np.zeros((2, 8, 9), np.int16), study_uid="1.2.3.99")
    with pytest.raises(ReadError) as err:
        read_source(folder)
    texts = {
        "warnings": json.dumps(image.warnings),
        "zarr": metadata,
        "table": table.to_csv(),
        "error": str(err.value),
    }
    for where, text in texts.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{where} leaks {leaked}"


def test_a_slice_cut_before_its_pixels_is_reported_and_flagged(tmp_path):
    copy_real_ct_series(tmp_path / "s", cut=2)  # the middle slice of pydicom's real CT
    (tmp_path / "s" / "notes.txt").write_text("scanner notes")
    image = read_source(tmp_path / "s")
    assert image.array.shape == (4, 16, 16)
    assert image.warnings[0].startswith("ignored 1 image file(s) without pixel data (truncated?)")
    assert any(w.startswith("ignored 1 non-DICOM file(s)") for w in image.warnings)
    assert any(w.startswith("missing slices: 1 gap(s) up to 5 mm") for w in image.warnings)
    assert misses_slices(image.warnings)
    assert not misses_slices(read_source(REAL_CT_SERIES).warnings)
    copy_real_ct_series(tmp_path / "last", cut=4)  # the last slice: no gap, still missing
    assert misses_slices(read_source(tmp_path / "last").warnings)


def test_the_dicom_files_of_a_source_are_those_the_reader_reads(tmp_path):
    files = copy_real_ct_series(tmp_path / "s")
    copy_real_ct_series(tmp_path / "s" / "sub", series_uid="1.2.826.0.1.3680043.2.1125.9")
    (tmp_path / "s" / "notes.txt").write_text("x")
    assert dicom_files(tmp_path / "s") == files  # top level only, DICOM only
    (tmp_path / "l.dcmlist").write_text("".join(f"{p}\n" for p in files[:2]))
    assert dicom_files(tmp_path / "l.dcmlist") == files[:2]
    assert dicom_files(files[0]) == files[:1] and dicom_files(tmp_path / "s" / "notes.txt") == []
