"""Display order: volumes are segmented as shown in radiological display, masks mapped back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3.models.orientation import DisplayOrder, display_order, segment_in_display_order

L, P, S = np.eye(3)
# index axes x, y, z as world (LPS) vectors -> what rows and columns must run along on display
GEOMETRIES = {
    "LPS axial (DICOM)": ((L, P, S), P, L),
    "RAS axial (nibabel NIfTI)": ((-L, -P, S), P, L),
    "DeepLesion, stored transposed": ((P, L, -S), P, L),
    "coronal, stored upside down and mirrored": ((-L, S, P), -S, L),
    "sagittal, columns to anterior": ((-P, -S, L), -S, P),
}


def display_steps(axes) -> tuple[np.ndarray, np.ndarray]:
    """World step of one display row and one display column, via SimpleITK's index->point."""
    img = sitk.Image(6, 5, 4, sitk.sitkUInt8)  # x, y, z sizes
    img.SetDirection(np.column_stack(axes).ravel().tolist())
    order = display_order(img.GetDirection())
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (4, 5, 6)), indexing="ij"), -1)
    shown = order.to_display(grid)  # display (z, row, col) -> stored (z, y, x) index

    def point(r, c):
        z, y, x = (int(v) for v in shown[1, r, c])
        return np.array(img.TransformIndexToPhysicalPoint((x, y, z)))

    return point(1, 0) - point(0, 0), point(0, 1) - point(0, 0)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_display_rows_and_columns_run_along_the_radiological_axes(name):
    axes, row_world, col_world = GEOMETRIES[name]
    row_step, col_step = display_steps(axes)
    assert np.allclose(row_step, row_world) and np.allclose(col_step, col_world)


def test_slightly_oblique_volumes_use_the_nearest_axes_and_spacing_follows_a_swap():
    tilt = np.deg2rad(10)
    x = np.array([0.0, np.cos(tilt), np.sin(tilt)])  # index x runs mostly posterior
    y = np.array([1.0, 0.0, 0.0])
    order = display_order(tuple(np.column_stack([x, y, np.cross(x, y)]).ravel()))
    assert order == DisplayOrder(transpose=True)
    assert order.spacing((0.7, 0.9, 5.0)) == (0.9, 0.7, 5.0)
    assert display_order((1.0, 0.0, 0.0, 1.0)).identity  # 2D images keep their order
    assert display_order(None).identity


def test_a_volume_too_oblique_to_name_a_plane_is_kept_as_stored(caplog):
    c = np.sqrt(0.5)  # rotated 45 degrees about S: index x and y lie between left and posterior
    direction = (c, -c, 0.0, c, c, 0.0, 0.0, 0.0, 1.0)
    with caplog.at_level("WARNING", logger="medsam3.models.orientation"):
        assert display_order(direction).identity
    assert "too oblique" in caplog.text


def test_every_display_order_maps_back_exactly():
    stored = np.random.default_rng(0).random((3, 5, 7))
    for flags in itertools.product([False, True], repeat=3):
        order = DisplayOrder(*flags)
        shown = order.to_display(stored)
        assert shown.shape == ((3, 7, 5) if order.transpose else stored.shape)
        assert np.array_equal(order.to_stored(shown), stored)


@pytest.fixture(scope="module")
def compact():
    from medsam3 import load_model

    return load_model(backend="compact")


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known regression of head v3 (docs/model_card.md, Known limits): on these MNI152 "
        "slices left/right hippocampus pass presence (0.47-0.69 per slice, head v4.2) but "
        "the head's dense mask stays below logit 0 (volumes are cut at 0), so there is no "
        "mask to check the side of (heads v5 to v9 still fail this)"
    ),
)
def test_left_hippocampus_of_a_ras_nifti_is_on_the_patients_left(compact, tmp_path):
    """nibabel writes MNI152 RAS: stored columns run to the patient's right, rows to anterior."""
    datasets = pytest.importorskip("nilearn.datasets")
    from medsam3.io.image import same_space
    from medsam3.io.read import read_source
    from medsam3.pipeline.segment_file import segment_file

    template = datasets.load_mni152_template(resolution=2)
    template.slicer[:, :, 26:32].to_filename(tmp_path / "mni_hippocampus.nii.gz")
    source = read_source(tmp_path / "mni_hippocampus.nii.gz", modality="mri")
    assert display_order(source.direction) == DisplayOrder(flip_rows=True, flip_cols=True)
    phrases = ["left hippocampus", "right hippocampus"]
    summary = segment_file(tmp_path / "mni_hippocampus.nii.gz", phrases, tmp_path / "out", compact)
    lps_x = {}
    for phrase in phrases:
        assert summary["concepts"][phrase]["presence"] >= compact.presence_threshold
        mask = read_source(tmp_path / "out" / f"{phrase.replace(' ', '_')}.nii.gz")
        assert same_space(mask, source)
        z, y, x = np.nonzero(mask.array)
        img = mask.to_sitk()
        centre = (float(x.mean()), float(y.mean()), float(z.mean()))
        lps_x[phrase] = img.TransformContinuousIndexToPhysicalPoint(centre)[0]
    # LPS: +x is the patient's left; MNI's midline is x = 0
    assert lps_x["left hippocampus"] > 0 > lps_x["right hippocampus"]


def test_sam3_results_come_back_on_the_stored_grid(tmp_path):
    """Same masks as segmenting a flipped copy by hand; instance boxes fit the stored masks."""
    pytest.importorskip("transformers")
    datasets = pytest.importorskip("nilearn.datasets")
    from medsam3.io.read import read_source
    from medsam3.models.base import mask_box
    from medsam3.models.sam3 import build_random_sam3

    datasets.load_mni152_template(resolution=2).slicer[:, :, 40:44].to_filename(tmp_path / "t.nii")
    volume = read_source(tmp_path / "t.nii", modality="mri")
    model = build_random_sam3("tiny", score_threshold=0.2, volume_mode="per_slice")
    stored = segment_in_display_order(model, volume, ["brain"])["brain"]
    flipped = np.ascontiguousarray(volume.array[:, ::-1, ::-1])
    by_hand = model.segment(flipped, ["brain"], modality="mri", kind="volume")["brain"]
    assert stored.mask.shape == volume.array.shape and stored.mask.any()
    assert np.array_equal(stored.mask, by_hand.mask[:, ::-1, ::-1])
    flips = {"transpose": False, "flip_rows": True, "flip_cols": True}
    assert stored.extra["display_order"] == flips
    for inst in stored.instances:
        assert inst.box == mask_box(inst.mask)
