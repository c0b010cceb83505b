"""Intensity pre-processing shared by the backends: concepts grouped by CT window."""

from __future__ import annotations

from medsam3.models.preprocess import CT_WINDOWS, group_by_ct_window


def test_ct_concepts_share_a_plane_per_window_in_input_order():
    phrases = ["liver", "left lung", "spleen", "rib", "hepatic vein", "right lung"]
    groups = group_by_ct_window(phrases, "CT")
    assert groups == {
        CT_WINDOWS["liver"]: ["liver", "hepatic vein"],
        CT_WINDOWS["lung"]: ["left lung", "right lung"],
        CT_WINDOWS["soft_tissue"]: ["spleen"],
        CT_WINDOWS["bone"]: ["rib"],
    }
    assert list(groups.values())[0] == ["liver", "hepatic vein"]
    assert group_by_ct_window(phrases, "mri") == {None: phrases}
    assert group_by_ct_window(phrases, None) == {None: phrases}
