"""Export round trips: NIfTI (SimpleITK and nibabel), PNG, video masks, DICOM-SEG on real CT."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from io_helpers import copy_real_ct_series
from PIL import Image
from pydicom.data import get_testdata_file

from medsam3.io.common import concept_slug
from medsam3.io.image import MedImage
from medsam3.io.masks import (
    concept_codes,
    export_dicom_seg,
    export_nifti,
    export_png,
    export_video_masks,
    sort_along_normal,
    write_concept_masks,
)
from medsam3.io.read import read_source

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture()
def volume() -> MedImage:
    """A volume with anisotropic spacing, an offset origin and a rotated direction."""
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(5, 7, 9)).astype(np.int16)
    return MedImage(arr, "volume", (0.7, 0.8, 3.0), (-12.5, 40.0, 7.0), OBLIQUE, modality="ct")


def test_nifti_round_trip_geometry_and_voxels(tmp_path, volume):
    mask = (volume.array > 300).astype(np.uint8)
    path = export_nifti(mask, volume, tmp_path / "liver.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["liver.nii.gz"]  # no temp file left
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(back.GetSpacing(), volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), volume.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    # another library: nibabel's RAS affine maps voxel (i, j, k) like SimpleITK's LPS mapping
    nii = nib.load(path)
    assert nii.get_fdata().transpose(2, 1, 0).astype(np.uint8).tolist() == mask.tolist()
    ijk = (3, 2, 4)
    lps = np.array(back.TransformIndexToPhysicalPoint(ijk))
    ras = nii.affine @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)


def test_nifti_rejects_wrong_shape(tmp_path, volume):
    with pytest.raises(ValueError, match="differs from the image"):
        export_nifti(np.zeros((5, 7, 8), np.uint8), volume, tmp_path / "x.nii.gz")
    assert not any(tmp_path.iterdir())


def test_png_binary_and_instance_ids(tmp_path):
    binary = np.zeros((6, 8), np.uint8)
    binary[1:3, 2:5] = 1
    out = np.asarray(Image.open(export_png(binary, tmp_path / "b.png")))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out > 0, binary > 0)
    ids = binary * 3
    ids[4, 4] = 7
    np.testing.assert_array_equal(np.asarray(Image.open(export_png(ids, tmp_path / "i.png"))), ids)
    with pytest.raises(ValueError, match=r"\(y, x\)"):
        export_png(np.zeros((2, 3, 3), np.uint8), tmp_path / "bad.png")


def test_video_masks_png_and_nifti(tmp_path):
    video = MedImage(
        np.zeros((3, 4, 5, 3), np.uint8),
        "video",
        (0.5, 0.5, 1.0),
        (2.0, 3.0, 0.0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        frame_rate=20.0,
    )
    mask = np.zeros((3, 4, 5), np.uint8)
    mask[2, 1:3, 1:4] = 1
    paths = export_video_masks(mask, video, tmp_path / "png")
    assert [p.name for p in paths] == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    frames = np.stack([np.asarray(Image.open(p)) for p in paths])
    np.testing.assert_array_equal(frames, mask * 255)
    (nii,) = export_video_masks(mask, video, tmp_path / "nii", fmt="nifti")
    back = sitk.ReadImage(str(nii))
    np.testing.assert_allclose(back.GetSpacing(), (0.5, 0.5, 0.05))
    np.testing.assert_allclose(back.GetOrigin(), (2.0, 3.0, 0.0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    with pytest.raises(ValueError, match="fmt"):
        export_video_masks(mask, video, tmp_path, fmt="gif")


def test_concept_codes():
    cat, typ = concept_codes("liver")
    assert (cat.value, typ.value, typ.meaning) == ("91723000", "10200004", "Liver")
    cat, typ = concept_codes("brain tumor")
    assert cat.meaning == "Morphologically Abnormal Structure" and typ.meaning == "Tumor"
    assert concept_codes("left atrium")[1].meaning == "Left atrium"
    assert [c.meaning for c in concept_codes("zebra stripes 2")] == ["Tissue", "Tissue"]


@pytest.fixture(scope="module")
def ct_series() -> list[Path]:
    """A real 5-slice CT series (16 x 16 px) that ships with pydicom's test files."""
    folder = Path(get_testdata_file("2392")).parent
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) == 5
    return files


def test_dicom_seg_round_trip_on_real_ct(tmp_path, ct_series):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_series[0].parent)))
    vol = sitk.GetArrayFromImage(reader.Execute())  # (z, y, x), slices ascending along the normal
    mask = (vol > np.median(vol)).astype(np.uint8)
    mask[2] = 0  # one empty slice: omitted from the SEG frames
    path = export_dicom_seg(
        mask,
        list(reversed(ct_series)),
        "liver",
        tmp_path / "seg.dcm",
        algorithm="medsam3-compact",
        version="0.1.0",
    )
    seg = hd.seg.segread(path)
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ct_series}
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(sources)
    assert int(seg.NumberOfFrames) == 4
    assert seg.SegmentSequence[0].SegmentLabel == "liver"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("medsam3-compact", "0.1.0")
    # each source instance's frame equals the mask computed from that instance's own pixels
    threshold = np.median(vol)
    z_of = {
        uid: k
        for k, uid in enumerate(
            ds.SOPInstanceUID for ds in sort_along_normal(list(sources.values()))
        )
    }
    for uid, ds in sources.items():
        expected = (
            ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > threshold
        ).astype(np.uint8)
        if z_of[uid] == 2:
            expected[:] = 0
        got = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid],
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[0, :, :, 0]
        np.testing.assert_array_equal(got, expected)


def test_dicom_seg_rejects_mismatched_series(tmp_path, ct_series):
    with pytest.raises(ValueError, match="5 source files"):
        export_dicom_seg(
            np.zeros((4, 16, 16), np.uint8), ct_series, "liver", tmp_path / "s.dcm", "a", "1"
        )
    with pytest.raises(ValueError, match="sources are"):
        export_dicom_seg(
            np.zeros((5, 8, 8), np.uint8), ct_series, "liver", tmp_path / "s.dcm", "a", "1"
        )
    assert not any(tmp_path.iterdir())


def test_write_concept_masks_picks_files_by_kind_and_format(tmp_path, volume):
    image = MedImage(np.zeros((4, 5), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 1:3] = 1
    written = write_concept_masks(mask, image, "left kidney", tmp_path / "a")
    assert [p.name for p in written] == ["left_kidney.png"]
    other = write_concept_masks(mask, image, "Left Kidney", tmp_path / "a")  # another phrase
    assert [p.name for p in other] == [f"{concept_slug('Left Kidney')}.png"] != written
    assert write_concept_masks(mask, image, "x", tmp_path / "b", formats=["nifti"]) == []
    vmask = (volume.array > 0).astype(np.uint8)
    both = write_concept_masks(
        vmask, volume, "liver", tmp_path / "c", ["png", "nifti", "dicom-seg"]
    )
    assert [p.name for p in both] == ["liver.nii.gz"]  # no DICOM source: no SEG
    video = MedImage(np.zeros((2, 4, 5), np.uint8), "video", (1.0, 1.0, 1.0), (0, 0, 0), OBLIQUE)
    vid = np.stack([mask, mask])
    frames = write_concept_masks(vid, video, "polyp", tmp_path / "d")
    assert [str(p.relative_to(tmp_path / "d")) for p in frames] == [
        "polyp/frame_0000.png",
        "polyp/frame_0001.png",
    ]
    (nii,) = write_concept_masks(vid, video, "polyp", tmp_path / "e", formats=["nifti"])
    assert nii.relative_to(tmp_path / "e") == Path("polyp/mask.nii.gz")


def test_dicom_seg_frames_meet_the_slices_the_reader_stacked(tmp_path, ct_series):
    """The reader and the SEG export order slices with the same function."""
    ct = read_source(ct_series[0].parent)
    threshold = np.median(ct.array)
    mask = (ct.array > threshold).astype(np.uint8)
    source = ct_series[0].parent
    paths = write_concept_masks(mask, ct, "liver", tmp_path, ["nifti", "dicom-seg"], source=source)
    assert [p.name for p in paths] == ["liver.nii.gz", "liver.dcm"]
    seg = hd.seg.segread(paths[1])
    for path in ct_series:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        got = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID],
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[0, :, :, 0]
        np.testing.assert_array_equal(got, (hu > threshold).astype(np.uint8))


def test_dicom_seg_of_a_real_series_without_optional_tags_beside_another_series(tmp_path):
    """No PatientSex / PatientBirthDate / AccessionNumber, a second series in a subfolder and
    a slice without pixels: the SEG references exactly the slices the reader stacked."""
    drop = ("PatientSex", "PatientBirthDate", "AccessionNumber", "StudyID")
    files = copy_real_ct_series(tmp_path / "s", drop=drop, cut=2)
    copy_real_ct_series(tmp_path / "s" / "sub", drop=drop, series_uid="1.2.826.0.1.3680043.2.1.9")
    ct = read_source(tmp_path / "s")
    mask = (ct.array > np.median(ct.array)).astype(np.uint8)
    paths = write_concept_masks(mask, ct, "liver", tmp_path / "m", ["dicom-seg"], tmp_path / "s")
    seg = hd.seg.segread(paths[0])
    read = {pydicom.dcmread(p).SOPInstanceUID for i, p in enumerate(files) if i != 2}
    assert {uid for _, _, uid in seg.get_source_image_uids()} == read
    assert (seg.PatientSex, seg.PatientBirthDate, seg.AccessionNumber) == ("", "", "")
