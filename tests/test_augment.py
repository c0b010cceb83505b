"""Augmented training views: one geometry for a plane and its masks, honest left/right names."""

from __future__ import annotations

import random

import numpy as np
import pytest

from medsam3.training.augment import (
    IDENTITY,
    ViewParams,
    apply_geometry,
    apply_view,
    draw_view,
    flip_safe,
    swap_side,
)


@pytest.fixture(scope="module")
def mri_rgb() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    from medsam3.models.preprocess import to_uint8_rgb

    vol = load_mni152_template().get_fdata().astype(np.float32)
    return to_uint8_rgb(np.ascontiguousarray(np.rot90(vol[:, :, vol.shape[2] // 2])), "mri")


def test_the_identity_view_changes_nothing(mri_rgb):
    mask = mri_rgb[..., 0] > 100
    image, masks = apply_view(mri_rgb, {"brain": mask}, IDENTITY)
    np.testing.assert_array_equal(image, mri_rgb)
    np.testing.assert_array_equal(masks["brain"], mask)
    assert not IDENTITY.changes_intensity


def test_plane_and_mask_share_one_geometry(mri_rgb):
    mask = mri_rgb[..., 0] > 100
    params = ViewParams(crop=(0.1, 0.2, 0.9, 0.7), hflip=True, vflip=True, rot90=1)
    image, masks = apply_view(mri_rgb, {"brain": mask}, params)
    assert image.shape[:2] == masks["brain"].shape
    np.testing.assert_array_equal(masks["brain"], image[..., 0] > 100)  # no intensity change
    h, w = mri_rgb.shape[:2]
    rows, cols = round(0.9 * h) - round(0.1 * h), round(0.7 * w) - round(0.2 * w)
    assert image.shape[:2] == (cols, rows), "cropped, then turned a quarter"


def test_a_mirrored_view_swaps_left_and_right_names(mri_rgb):
    left = np.zeros(mri_rgb.shape[:2], bool)
    left[:, -20:] = True  # the patient's left is on the image's right
    _, masks = apply_view(mri_rgb, {"left hippocampus": left}, ViewParams(hflip=True))
    assert list(masks) == ["right hippocampus"]
    assert masks["right hippocampus"][:, :20].all(), "now on the image's left: the right side"
    assert swap_side("right kidney") == "left kidney" and swap_side("liver") == "liver"


def test_heart_chambers_are_never_mirrored():
    assert not flip_safe(["left ventricle", "myocardium"])
    assert flip_safe(["left lung", "right lung", "heart"])
    rng = random.Random(0)
    for _ in range(200):
        view = draw_view(rng, "mri", ["left ventricle", "myocardium"], color=False)
        assert not view.hflip and view.rot90 == 0


def test_views_are_seeded_and_intensity_stays_in_range(mri_rgb):
    a = draw_view(random.Random("x/1"), "dermoscopy", ["skin lesion"], color=True)
    b = draw_view(random.Random("x/1"), "dermoscopy", ["skin lesion"], color=True)
    assert a == b
    params = ViewParams(
        gamma=1.3,
        contrast=1.2,
        brightness=0.05,
        noise=0.03,
        blur=1.0,
        jpeg=40,
        hue=0.03,
        saturation=1.2,
        seed=3,
    )
    out = apply_geometry(mri_rgb, params)
    from medsam3.training.augment import apply_intensity

    changed = apply_intensity(out, params)
    assert changed.dtype == np.uint8 and changed.shape == mri_rgb.shape
    assert not np.array_equal(changed, mri_rgb) and params.changes_intensity
