"""Export round trips: NIfTI (SimpleITK and nibabel), PNG, video masks, DICOM-SEG on real CT."""

from __future__ import annotations

import json
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
from medsam3.io.dicom_seg import concept_codes, export_dicom_seg, sort_along_normal
from medsam3.io.image import MedImage
from medsam3.io.masks import (
    export_nifti,
    export_png,
    export_video_masks,
    instance_labels,
    write_concept_masks,
    write_multilabel_nifti,
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
    """PNGs are 0/255 for viewing, NIfTIs hold the instance ids (2D, volume and video)."""
    image = MedImage(np.zeros((4, 5), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 1:3], mask[3, 4] = 1, 2
    written = write_concept_masks(mask, image, "left kidney", tmp_path / "a")
    assert [p.name for p in written] == ["left_kidney.png", "left_kidney.nii.gz"]
    png = np.asarray(Image.open(written[0]))
    np.testing.assert_array_equal(png, (mask > 0) * 255)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written[1]))), mask)
    other = write_concept_masks(mask, image, "Left Kidney", tmp_path / "a", formats=["png"])
    assert [p.name for p in other] == [f"{concept_slug('Left Kidney')}.png"] != written[:1]
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
        "polyp/mask.nii.gz",
    ]
    assert set(np.unique(np.asarray(Image.open(frames[0])))) == {0, 255}
    (nii,) = write_concept_masks(vid, video, "polyp", tmp_path / "e", formats=["nifti"])
    assert nii.relative_to(tmp_path / "e") == Path("polyp/mask.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(nii))), vid)


def test_instances_are_the_models_when_they_cover_the_union_else_components():
    union = np.zeros((8, 8), np.uint8)
    union[1:3, 1:3] = union[5:7, 5:7] = 1
    first = np.zeros((8, 8), bool)
    first[1:3, 1:3] = True
    second = union.astype(bool) & ~first
    label, scores = instance_labels(union, [first, second], [0.9, 0.8], presence=0.95)
    assert set(np.unique(label)) == {0, 1, 2} and scores == [0.9, 0.8]
    assert label.dtype == np.uint8 and label[1, 1] == 1 and label[6, 6] == 2
    # one instance misses part of the union: the 8-connected components, scored by overlap
    label, scores = instance_labels(union, [first], [0.7], presence=0.6)
    np.testing.assert_array_equal(label > 0, union > 0)
    assert scores == [0.7, 0.6] and label[1, 1] == 1  # the uncovered one gets the presence
    diagonal = np.eye(6, dtype=np.uint8)  # touching corners: one 8-connected instance
    assert instance_labels(diagonal, [], [], 0.5)[1] == [0.5]
    many = np.zeros((40, 40), np.uint8)
    many[::2, ::2] = 1  # 400 isolated pixels: ids above 255
    label, scores = instance_labels(many, [], [], 0.5)
    assert label.dtype == np.uint16 and label.max() == 400 and len(scores) == 400
    assert not any(np.isnan(scores))


def test_multilabel_nifti_and_its_sidecar(tmp_path, volume):
    liver = np.zeros(volume.spatial_shape, np.uint8)
    liver[1:3, 2:4, 2:5] = 2  # instance ids do not matter: value = the concept's number
    spleen = np.zeros(volume.spatial_shape, np.uint8)
    spleen[2:4, 2:4, 2:5] = 1
    nii, sidecar = write_multilabel_nifti({"liver": liver, "spleen": spleen}, volume, tmp_path)
    merged = sitk.GetArrayFromImage(sitk.ReadImage(str(nii)))
    assert json.loads(sidecar.read_text()) == {"1": "liver", "2": "spleen"}
    assert (merged[1:3, 2:4, 2:5] == 1).all() and (merged[3, 2:4, 2:5] == 2).all()
    assert (merged > 0).sum() == ((liver > 0) | (spleen > 0)).sum()


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
