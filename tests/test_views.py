"""Training views: seeded plans, encoded once, targets and hard negatives per view."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.training.augment import ViewParams
from medsam3.training.data import Sample
from medsam3.training.views import View, augment_counts, encode_views, load_views, plan_views


@pytest.fixture(scope="module")
def slices():
    """Two real MNI152 slices: one with a top blob labelled, one without it (same dataset)."""
    from nilearn.datasets import load_mni152_template

    from medsam3.models.preprocess import to_uint8_rgb

    vol = load_mni152_template().get_fdata().astype(np.float32)
    planes = [to_uint8_rgb(np.ascontiguousarray(np.rot90(vol[:, :, z])), "mri") for z in (60, 90)]
    brain = [p[..., 0] > 60 for p in planes]
    top = np.zeros(brain[0].shape, bool)
    top[10:40, 80:120] = True
    return [
        Sample(
            "a",
            "train",
            "mni",
            "mri",
            "brain",
            lambda p=planes[0]: p,
            {"brain": lambda m=brain[0]: m, "blob": lambda: top},
        ),
        Sample(
            "b",
            "train",
            "mni",
            "mri",
            "brain",
            lambda p=planes[1]: p,
            {"brain": lambda m=brain[1]: m},
        ),
    ]


def test_small_datasets_get_more_views_within_bounds(slices):
    counts = augment_counts(slices, target=10, low=1, high=3)
    assert counts == {"mni": 3}  # 10 / 2 planes - 1 = 4, capped at 3
    assert augment_counts(slices, target=2, low=1, high=3) == {"mni": 1}


def test_view_plans_are_reproducible(slices):
    first = plan_views(slices, {"mni": 2}, seed=5)
    again = plan_views(slices, {"mni": 2}, seed=5)
    other = plan_views(slices, {"mni": 2}, seed=6)
    assert [v.key for v in first] == ["a#v0", "a#v1", "a#v2", "b#v0", "b#v1", "b#v2"]
    assert [v.params for v in first] == [v.params for v in again]
    assert [v.params for v in first] != [v.params for v in other]


def test_views_are_encoded_once_with_targets_and_hard_negatives(slices, tmp_path, monkeypatch):
    import torch

    from medsam3.models.litemedsam import LiteMedSAM

    monkeypatch.setenv("MEDSAM3_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    bottom = ViewParams(crop=(0.5, 0.0, 1.0, 1.0))  # the blob is cut away
    views = [
        View(slices[0], 0, ViewParams()),
        View(slices[0], 1, bottom),
        View(slices[1], 0, ViewParams()),
    ]
    sam = LiteMedSAM()
    index = encode_views(views, sam, tmp_path / "index.json")
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 3
    calls = []
    handle = sam.net.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    encode_views(views, sam, tmp_path / "index.json")  # all cached: nothing re-encoded
    handle.remove()
    assert calls == []
    data = load_views(views, index)
    assert data["emb"].shape == (3, 256, 64, 64) and data["frame"].shape == (3, 3, 256, 256)
    targets = {(i, c) for i, c, _ in data["pos"]}
    assert targets == {(0, "brain"), (0, "blob"), (1, "brain"), (2, "brain")}
    assert data["hard"] == [[], ["blob"], ["blob"]], "absent, but annotated in the dataset"
    frame_blob = next(t for i, c, t in data["pos"] if (i, c) == (0, "blob"))
    assert frame_blob.dtype == torch.uint8 and (frame_blob > 127).sum() > 50
