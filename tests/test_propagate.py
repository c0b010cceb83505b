"""Slice-to-slice propagation: the logic on real geometry and the full path on a real MRI slab."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam3.models.propagate import (
    hysteresis,
    instances_3d,
    interpolate_masks,
    key_slices,
    propagate_masks,
    slice_stride,
)


def _disc(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _sphere_slices(n=9, shape=(64, 64)):
    """An ellipsoid: one disc per slice, radius shrinking away from the middle slice."""
    radii = [max(0, 20 - 4 * abs(z - n // 2)) for z in range(n)]
    return [_disc(shape, (32, 30), r) if r > 0 else np.zeros(shape, bool) for r in radii], radii


def test_propagation_fills_undetected_neighbours_from_the_previous_box():
    truth, radii = _sphere_slices()
    detected = [m if z == 4 else np.zeros_like(m) for z, m in enumerate(truth)]
    presence = np.array([0.0, 0.3, 0.4, 0.45, 0.9, 0.45, 0.4, 0.3, 0.0])
    prompts = []

    def decode_box(z, box):  # a box-driven segmenter: the true object inside the prompt box
        prompts.append((z, box))
        x0, y0, x1, y1 = box
        out = np.zeros_like(truth[z])
        out[y0:y1, x0:x1] = truth[z][y0:y1, x0:x1]
        return out

    out = propagate_masks(detected, presence, decode_box, stop_threshold=0.2)
    for z in range(1, 8):
        assert (out[z] == truth[z]).all(), z
    assert not out[0].any() and not out[8].any(), "stops where presence drops"
    # each prompt is the (padded) box of the previous slice's mask
    z, box = prompts[0]
    assert z == 5 and box[0] <= 10 and box[2] >= 50


def test_propagation_stops_on_implausible_jumps():
    truth, _ = _sphere_slices()
    detected = [m if z == 4 else np.zeros_like(m) for z, m in enumerate(truth)]
    presence = np.ones(9)
    out = propagate_masks(detected, presence, lambda z, box: np.ones_like(truth[z]))
    assert sum(m.any() for m in out) == 1


def test_hysteresis_extends_key_slices_through_confident_runs_only():
    presence = np.array([0.1, 0.4, 0.9, 0.5, 0.3, 0.5, 0.45, 0.0, 0.7])
    keep = hysteresis(presence, high=0.6, low=0.35)
    # run 1-3 holds a key slice; run 5-6 has none; slice 8 is a key slice on its own
    assert keep.tolist() == [False, True, True, True, False, False, False, False, True]
    assert not hysteresis(np.full(4, 0.5), high=0.6, low=0.35).any()


def test_slice_stride_follows_the_slice_spacing():
    assert slice_stride((0.8, 0.8, 1.0), 3.0) == 3
    assert slice_stride((0.8, 0.8, 1.5), 3.0) == 2
    assert slice_stride((0.8, 0.8, 5.0), 3.0) == 1  # thick slices: every one encoded
    assert slice_stride(None, 3.0) == slice_stride((1.0, 1.0, 1.0), None) == 1
    assert slice_stride((1.0, 1.0), 3.0) == 1  # a 2D spacing
    assert key_slices(10, 3) == [0, 3, 6, 9] and key_slices(11, 3) == [0, 3, 6, 9, 10]
    assert key_slices(1, 3) == [0] and key_slices(5, 1) == [0, 1, 2, 3, 4]


def test_interpolated_masks_follow_the_shape_between_key_slices():
    """Cones read on every 4th slice: the slices between get the blended outline, within a
    pixel of the truth; an end between keys holds the nearer key's mask."""
    truth, radii = _sphere_slices(n=9)
    keys = [0, 4, 8]
    out = interpolate_masks(keys, [truth[z] for z in keys], 9)
    for z in keys:
        assert (out[z] == truth[z]).all()
    for z in (1, 2, 3, 5, 6, 7):  # radii 8, 12, 16 between 4 and 20: blended, +-1 px
        radius = np.sqrt(out[z].sum() / np.pi)
        assert abs(radius - radii[z]) <= 1.0, (z, radius, radii[z])
    solid = [_disc((64, 64), (32, 30), r) for r in (8, 10, 12, 14, 16)]
    out = interpolate_masks([0, 4], [solid[0], solid[4]], 5)
    for z in (1, 2, 3):  # linearly growing disc: the blended outline is the true one, +-1 px
        area, want = out[z].sum(), solid[z].sum()
        assert abs(np.sqrt(area / np.pi) - np.sqrt(want / np.pi)) <= 1.0, (z, area, want)
        assert (out[z] | solid[z - 1]).sum() == out[z].sum()  # contains the smaller disc
    end = interpolate_masks([0, 2, 4], [solid[2], np.zeros((64, 64), bool), solid[2]], 5)
    assert (end[1] == solid[2]).all() and (end[3] == solid[2]).all()  # half way: non-empty
    gone = interpolate_masks([0, 3], [solid[2], np.zeros((64, 64), bool)], 4)
    assert (gone[1] == solid[2]).all() and not gone[2].any()  # nearer key


def test_instances_3d_boxes_are_xyz_end_exclusive():
    vol = np.zeros((5, 20, 30), np.uint8)
    vol[1:3, 4:9, 10:20] = 1
    vol[4, 15:18, 2:4] = 1
    inst = instances_3d(vol, 0.8, min_voxels=4)
    boxes = sorted(i.box for i in inst)
    assert boxes == [(2, 15, 4, 4, 18, 5), (10, 4, 1, 20, 9, 3)]
    assert all(i.mask.shape == vol.shape for i in inst)


@pytest.fixture(scope="module")
def model():
    from medsam3 import load_model

    torch.set_num_threads(2)
    return load_model(backend="compact")


@pytest.fixture(scope="module")
def mni_slab() -> np.ndarray:
    """Three axial MNI152 T1 slices, 6 slices apart around the middle."""
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template().get_fdata().astype(np.float32)
    mid = vol.shape[2] // 2
    return np.stack([np.rot90(vol[:, :, z]) for z in (mid - 6, mid, mid + 6)])


def test_volume_end_to_end_on_mni_slab(model, mni_slab):
    slab = mni_slab
    res = model.segment(slab, ["brain", "polyp"], modality="mri", kind="volume")
    for r in res.values():
        assert r.mask.shape == slab.shape and r.mask.dtype == np.uint8
        assert len(r.extra["presence_per_slice"]) == 3
        assert 0.0 <= r.presence <= 1.0
        for inst in r.instances:
            assert len(inst.box) == 6
    assert res["polyp"].presence < model.presence_threshold


def test_key_slices_need_the_extension_threshold_however_low_the_models(
    model, mni_slab, monkeypatch
):
    """The presence threshold is fitted on 2D images (0.25 in head v4.2); a volume's key
    slices still need the hysteresis threshold (0.35), so a low threshold does not start
    objects on every slice where a phrase scores a little ("eye": 0.03-0.05 per slice with
    head v7, where "lesion", used up to v6, scores 0.001; a head that scores it 0 or above 0.35
    needs another phrase here)."""
    monkeypatch.setattr(model, "presence_threshold", 0.0)
    res = model.segment(mni_slab, ["brain", "eye"], modality="mri", kind="volume")
    eye = res["eye"]
    assert 0.01 < max(eye.extra["presence_per_slice"]) < 0.35, eye.extra
    assert not eye.mask.any() and eye.extra["detected_slices"] == []
    assert res["brain"].mask.any(), "a confident concept still gets its mask"


def test_blank_slices_are_not_encoded_and_score_zero(model):
    """A brain slab after two blank slices (a single grey level, as air or zero padding):
    the blank slices get presence 0 and no mask (the head alone scores a blank plane about
    0.59 for "brain"), the brain slices the same as without them."""
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    mid = vol.shape[2] // 2
    brain = np.stack([np.rot90(vol[:, :, z]) for z in range(mid - 1, mid + 2)])
    stack = np.concatenate([np.zeros_like(brain[:2]), brain])
    with_blank = model.segment(stack, ["brain"], modality="mri", kind="volume")["brain"]
    alone = model.segment(brain, ["brain"], modality="mri", kind="volume")["brain"]
    assert with_blank.extra["blank_slices"] == [0, 1] and alone.extra["blank_slices"] == []
    assert with_blank.extra["presence_per_slice"][:2] == [0.0, 0.0]
    assert not with_blank.mask[:2].any() and with_blank.mask[2:].any(axis=(1, 2)).all()
    assert (with_blank.mask[2:] == alone.mask).all()
    assert with_blank.presence == pytest.approx(alone.presence)


def test_strided_volume_encodes_key_slices_and_interpolates_between(model, monkeypatch):
    """A 1 mm brain slab with key slices every 3 mm: only slices 0, 3, 6 are encoded, the
    others get an interpolated mask and presence; without a spacing every slice is encoded."""
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template().get_fdata().astype(np.float32)
    mid = vol.shape[2] // 2
    slab = np.stack([np.rot90(vol[:, :, z]) for z in range(mid - 3, mid + 4)])
    encoded = []
    real = model.encode_planes

    def counting(rgbs, modality=None):
        encoded.append(len(rgbs))
        return real(rgbs, modality)

    monkeypatch.setattr(model, "encode_planes", counting)
    monkeypatch.setattr(model, "key_spacing_mm", 3.0)
    res = model.segment(slab, ["brain"], "mri", spacing=(1.0, 1.0, 1.0), kind="volume")["brain"]
    assert sum(encoded) == 3 and res.extra["encoded_slices"] == 3
    assert res.mask.shape == slab.shape and res.mask.any(axis=(1, 2)).all()
    per_slice = res.extra["presence_per_slice"]
    assert len(per_slice) == 7 and min(per_slice[0], per_slice[3]) <= per_slice[1]
    encoded.clear()
    full = model.segment(slab, ["brain"], "mri", kind="volume")["brain"]  # spacing unknown
    assert sum(encoded) == 7 and full.extra["encoded_slices"] == 7
    inter = (res.mask[1] & full.mask[1]).sum()
    assert 2 * inter / (res.mask[1].sum() + full.mask[1].sum()) > 0.9
