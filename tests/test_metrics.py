"""Metrics on hand-checkable masks, and ground-truth loading from PNG / NIfTI / Zarr."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image

from medsam3.io.image import MedImage
from medsam3.reports.metrics import (
    load_ground_truth,
    matthews,
    monai_spacing,
    presence_correct,
    read_truth_mask,
    segmentation_metrics,
)


def _sphere(shape, centre_mm, radius_mm, spacing_xyz):
    """Boolean ball defined in physical mm on a (z, y, x) grid with SimpleITK spacing."""
    zz, yy, xx = np.indices(shape, dtype=float)
    sx, sy, sz = spacing_xyz
    cx, cy, cz = centre_mm
    return ((xx * sx - cx) ** 2 + (yy * sy - cy) ** 2 + (zz * sz - cz) ** 2) <= radius_mm**2


def test_two_squares_exact_dice_iou():
    a = np.zeros((30, 30), np.uint8)
    b = np.zeros((30, 30), np.uint8)
    a[0:10, 0:10] = 1
    b[5:15, 0:10] = 1  # overlap 5x10 = 50 px, each square 100 px
    m = segmentation_metrics(a, b, spacing=(1.0, 1.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(50 / 150)
    assert (m["pred_voxels"], m["truth_voxels"]) == (100, 100)
    assert m["hd95"] == pytest.approx(5.0)


def test_identical_masks_are_perfect():
    a = _sphere((20, 20, 20), (10, 10, 10), 6, (1, 1, 1))
    m = segmentation_metrics(a, a, spacing=(1.0, 1.0, 1.0))
    assert (m["dice"], m["iou"], m["nsd"], m["hd95"]) == (1.0, 1.0, 1.0, 0.0)


def test_shifted_sphere_hd95_close_to_shift_in_mm_with_anisotropic_spacing():
    spacing = (1.0, 1.0, 3.0)  # SimpleITK (x, y, z): thick slices
    shape = (24, 48, 48)
    truth = _sphere(shape, (24, 24, 33), 15, spacing)
    along_z = _sphere(shape, (24, 24, 39), 15, spacing)  # 2 slices = 6 mm
    along_x = _sphere(shape, (30, 24, 33), 15, spacing)  # 6 columns = 6 mm
    hd_z = segmentation_metrics(along_z, truth, spacing)["hd95"]
    hd_x = segmentation_metrics(along_x, truth, spacing)["hd95"]
    # for a ball shifted by d, surface distances are ~ d |cos(theta)|, so HD95 ~ 0.95 d
    assert 4.5 <= hd_z <= 6.5
    assert 4.5 <= hd_x <= 6.5
    # reversing the spacing (the classic axis-order bug) makes the z shift 2 mm, not 6 mm
    wrong = segmentation_metrics(along_z, truth, spacing[::-1])["hd95"]
    assert wrong < 2.5


def test_monai_spacing_is_reversed_sitk_order():
    assert monai_spacing((0.5, 0.7, 3.0), 3) == (3.0, 0.7, 0.5)
    assert monai_spacing((0.5, 0.7), 2) == (0.7, 0.5)
    assert monai_spacing(None, 3) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="fewer than 3"):
        monai_spacing((1.0, 1.0), 3)


def test_nsd_tolerance_behaviour_in_the_right_axis():
    a = np.zeros((40, 40), np.uint8)
    b = np.zeros((40, 40), np.uint8)
    a[10:20, 10:20] = 1
    b[12:22, 10:20] = 1  # shifted 2 rows (y)
    nsd = [segmentation_metrics(a, b, (1.0, 1.0), tol)["nsd"] for tol in (0.5, 1.0, 1.5, 2.0)]
    assert nsd[-1] == pytest.approx(1.0)
    assert nsd[0] < nsd[1] <= nsd[2] <= nsd[3]
    assert nsd[0] < 0.9
    # rows 0.25 mm apart: the 2-row shift is 0.5 mm, within a 1 mm tolerance
    assert segmentation_metrics(a, b, (1.0, 0.25), 1.0)["nsd"] == pytest.approx(1.0)
    # columns 0.25 mm apart instead does not shrink the row shift
    assert segmentation_metrics(a, b, (0.25, 1.0), 1.0)["nsd"] < 0.9


def test_empty_mask_edge_cases():
    empty = np.zeros((16, 16), np.uint8)
    full = empty.copy()
    full[4:8, 4:8] = 1
    both = segmentation_metrics(empty, empty, (1.0, 1.0))
    assert (both["dice"], both["iou"], both["nsd"], both["hd95"]) == (1.0, 1.0, 1.0, 0.0)
    for pred, truth in ((empty, full), (full, empty)):
        one = segmentation_metrics(pred, truth, (1.0, 1.0))
        assert (one["dice"], one["iou"], one["nsd"]) == (0.0, 0.0, 0.0)
        assert math.isnan(one["hd95"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="resample"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((4, 5)), None)


def test_presence_and_matthews():
    assert presence_correct(True, True) and presence_correct(False, False)
    assert not presence_correct(True, False)
    assert matthews(5, 0, 5, 0) == pytest.approx(1.0)
    assert matthews(0, 5, 0, 5) == pytest.approx(-1.0)
    assert matthews(6, 2, 3, 1) == pytest.approx(16 / math.sqrt(8 * 7 * 5 * 4))
    assert matthews(4, 0, 0, 0) == 0.0


@pytest.fixture()
def volume_image() -> MedImage:
    """A small oblique volume with non-trivial geometry."""
    arr = np.zeros((6, 10, 12), np.int16)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return MedImage(arr, "volume", (0.8, 0.9, 2.5), (-10.0, 4.0, 7.0), direction, modality="ct")


def _write_truth_files(tmp_path, image: MedImage):
    """A NIfTI label map (values 0/1/2) on the image grid, a 0/255 PNG and a Zarr store."""
    import zarr

    labels = np.zeros(image.spatial_shape, np.uint8)
    labels[1:3, 2:5, 3:7] = 1
    labels[4, 6:9, 1:3] = 2
    img = sitk.GetImageFromArray(labels)
    img.SetSpacing(image.spacing)
    img.SetOrigin(image.origin)
    img.SetDirection(image.direction)
    sitk.WriteImage(img, str(tmp_path / "labels.nii.gz"))
    png = np.zeros((10, 12), np.uint8)
    png[2:6, 3:9] = 255
    Image.fromarray(png).save(tmp_path / "mask.png")
    root = zarr.open_group(str(tmp_path / "study.zarr"), mode="w")
    root.attrs.update(
        spacing=list(image.spacing), origin=list(image.origin), direction=list(image.direction)
    )
    root.create_array("labels/organs", data=labels)
    return labels, png


def test_load_and_read_truth_nifti_png_zarr(tmp_path, volume_image):
    labels, png = _write_truth_files(tmp_path, volume_image)
    pd.DataFrame(
        {
            "study_id": ["s1", "s1", "s2", "s1"],
            "concept": ["liver", "kidney", "polyp", "liver"],
            "mask": ["labels.nii.gz", "labels.nii.gz", "mask.png", "study.zarr#labels/organs"],
            "label_value": [1, 2, None, 1],
        }
    ).to_csv(tmp_path / "truth.csv", index=False)
    df = load_ground_truth(tmp_path / "truth.csv")
    assert df["label_value"].tolist() == [1, 2, None, 1]
    liver = read_truth_mask(df.iloc[0], volume_image)
    assert liver.dtype == np.uint8 and liver.sum() == (labels == 1).sum() == 24
    assert read_truth_mask(df.iloc[1], volume_image).sum() == (labels == 2).sum() == 6
    np.testing.assert_array_equal(read_truth_mask(df.iloc[3], volume_image), liver)
    image2d = MedImage(
        np.zeros((10, 12, 3), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)
    )
    np.testing.assert_array_equal(read_truth_mask(df.iloc[2], image2d), png > 0)


def test_truth_mask_in_another_space_is_rejected(tmp_path, volume_image):
    _write_truth_files(tmp_path, volume_image)
    row = {"mask": str(tmp_path / "labels.nii.gz"), "label_value": 1}
    moved = MedImage(
        volume_image.array, "volume", volume_image.spacing, (0.0, 0.0, 0.0), volume_image.direction
    )
    with pytest.raises(ValueError, match="not in the same space"):
        read_truth_mask(row, moved)
    small = MedImage(
        np.zeros((8, 8), np.uint8), "image", (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)
    )
    with pytest.raises(ValueError, match="pixel-aligned"):
        read_truth_mask({"mask": str(tmp_path / "mask.png"), "label_value": 255}, small)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_truth_mask({"mask": str(tmp_path / "nope.nii.gz"), "label_value": 1}, volume_image)


def test_video_truth_from_frame_folder(tmp_path):
    frames = np.zeros((3, 5, 6), np.uint8)
    frames[1, 1:3, 2:4] = 255
    frames[2, 0, 0] = 255
    (tmp_path / "polyp").mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "polyp" / f"frame_{t:04d}.png")
    video = MedImage(
        np.zeros((3, 5, 6, 3), np.uint8),
        "video",
        (1.0, 1.0, 1.0),
        (0, 0, 0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    got = read_truth_mask({"mask": str(tmp_path / "polyp"), "label_value": None}, video)
    np.testing.assert_array_equal(got, frames > 0)
    short = MedImage(
        np.zeros((2, 5, 6), np.uint8),
        "video",
        (1.0, 1.0, 1.0),
        (0, 0, 0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    with pytest.raises(ValueError, match="pixel-aligned"):
        read_truth_mask({"mask": str(tmp_path / "polyp"), "label_value": None}, short)


def test_truth_table_missing_column(tmp_path):
    (tmp_path / "t.csv").write_text("study_id,concept,mask\ns,liver,m.png\n")
    with pytest.raises(ValueError, match="label_value"):
        load_ground_truth(tmp_path / "t.csv")


@pytest.mark.shared_data
def test_real_volume_truth_against_itself(shared_data):
    manifest = pd.read_csv(shared_data / "manifest.csv")
    row = manifest[manifest["kind"] == "volume"].iloc[0]
    img = sitk.ReadImage(str(shared_data / row["image"]))
    image = MedImage.from_sitk(img, "volume")
    truth = read_truth_mask(
        {"mask": str(shared_data / row["mask"]), "label_value": row["label_value"]}, image
    )
    assert truth.shape == image.spatial_shape and truth.any()
    spacing = image.spacing
    m = segmentation_metrics(truth, truth, spacing)
    assert (m["dice"], m["nsd"], m["hd95"]) == (1.0, 1.0, 0.0)
    shifted = np.roll(truth, 1, axis=0)  # one slice along z
    hd = segmentation_metrics(shifted, truth, spacing)["hd95"]
    assert 0 < hd <= spacing[2] + 1e-6


@pytest.mark.shared_data
def test_real_video_and_png_truth(shared_data):
    manifest = pd.read_csv(shared_data / "manifest.csv")
    for kind in ("video", "image"):
        row = manifest[manifest["kind"] == kind].iloc[0]
        image_ref = shared_data / row["image"]
        paths = sorted(image_ref.glob("*.png")) if kind == "video" else [image_ref]
        planes = np.stack([np.asarray(Image.open(p)) for p in paths])
        arr = planes if kind == "video" else planes[0]
        spacing = (1.0, 1.0, 1.0) if kind == "video" else (1.0, 1.0)
        direction = (1, 0, 0, 0, 1, 0, 0, 0, 1) if kind == "video" else (1, 0, 0, 1)
        like = MedImage(arr, kind, spacing, (0.0,) * len(spacing), direction)
        truth = read_truth_mask({"mask": str(shared_data / row["mask"]), "label_value": None}, like)
        assert truth.shape == like.spatial_shape and set(np.unique(truth)) == {0, 1}


def test_truth_from_a_medsam3_study_store(tmp_path, volume_image):
    from medsam3.io.zarr_store import write_label, write_study

    store = write_study(tmp_path / "s1.zarr", volume_image)
    labels = np.zeros(volume_image.spatial_shape, np.uint8)
    labels[2:4, 3:6, 4:8] = 3
    write_label(store, "organs", labels, {})
    row = {"mask": f"{store}#labels/organs", "label_value": 3}
    np.testing.assert_array_equal(read_truth_mask(row, volume_image), labels == 3)
    moved = MedImage(
        volume_image.array, "volume", (1.0, 1.0, 1.0), volume_image.origin, volume_image.direction
    )
    with pytest.raises(ValueError, match="not in the same space"):
        read_truth_mask(row, moved)
