"""The agent's critic and priors on real masks of the shared data set (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsam3.agent.config import AgentConfig
from medsam3.agent.critic import (
    DEFAULT_COEF,
    DEFAULT_INTERCEPT,
    FEATURES,
    SIGNS,
    container_of,
    continuity,
    critic_score,
    features,
    fit_coefficients,
    relation,
    side_consistency,
)
from medsam3.agent.priors import Priors, load_priors, mask_stats
from medsam3.training.data import read_volume


def _mask(root, path: str) -> np.ndarray:
    m = np.asarray(Image.open(root / path))
    return (m[..., 0] if m.ndim == 3 else m) > 127


@pytest.fixture(scope="module")
def jsrt(shared_data):
    """A chest radiograph's lung masks (radiological display: patient's left on the right)."""
    base = "masks/jsrt_hybridgnet/jsrt_jpcln004__"
    return {
        c: _mask(shared_data, f"{base}{c.replace(' ', '_')}.png")
        for c in ("lung", "left lung", "right lung", "heart")
    }


@pytest.fixture(scope="module")
def liver(shared_data):
    base = "masks/liver_tumor_3d/liver_tumor_3d_10019_119__"
    return {
        c: _mask(shared_data, f"{base}{c.replace(' ', '_')}.png") for c in ("liver", "liver tumor")
    }


def test_shipped_priors_hold_the_training_concepts():
    priors = load_priors()
    assert {"liver", "left lung", "fetal head", "nucleus"} <= set(priors.concepts)
    lo, mid, hi = priors.concepts["liver"].log_share
    assert lo <= mid <= hi < 0
    x0, _, x1, _ = priors.concepts["left lung"].box
    assert (x0 + x1) / 2 > 0.5  # the patient's left lung lies on the image's right
    assert priors.features == FEATURES and len(priors.coef) == len(FEATURES)
    assert Priors.from_json(priors.to_json()) == priors


def test_mask_stats_of_a_real_mask(jsrt):
    share, components, box = mask_stats(jsrt["lung"])
    assert -1.5 < share < 0 and components == 2
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_laterality_in_radiological_order(jsrt):
    others = {"lung": jsrt["lung"]}
    assert side_consistency("left lung", jsrt["left lung"], others) == 1.0
    assert side_consistency("left lung", jsrt["right lung"], others) == 0.0
    assert side_consistency("right lung", jsrt["right lung"], {}) == 1.0
    assert side_consistency("left lung", jsrt["left lung"], {"right lung": jsrt["right lung"]})
    assert side_consistency("lung", jsrt["lung"], {}) is None  # not a lateral concept


def test_containment_of_a_tumour_in_its_organ(liver):
    assert container_of("liver tumor") == "liver" and container_of("neoplastic polyp") == "polyp"
    assert container_of("liver") is None
    inside = relation("liver tumor", liver["liver tumor"], {"liver": liver["liver"]})
    outside = relation("liver tumor", liver["liver tumor"], {"liver": ~liver["liver"]})
    unknown = relation("liver tumor", liver["liver tumor"], {})
    assert (inside, outside, unknown) == (1.0, 0.0, 0.5)


def _implausible(jsrt) -> tuple[dict, list[dict]]:
    """Features of the real left lung mask and of four implausible ones."""
    real = features("left lung", jsrt["left lung"], 0.9, {"lung": jsrt["lung"]})
    wrong_side = features("left lung", jsrt["right lung"], 0.9, {"lung": jsrt["lung"]})
    everything = features("left lung", np.ones_like(jsrt["lung"]), 0.9)
    speckle = np.zeros_like(jsrt["lung"])
    speckle[::9, ::9] = True
    specks = features("left lung", speckle, 0.9)
    empty = features("left lung", np.zeros_like(jsrt["lung"]), 0.9)
    assert real["share_out"] == 0 and real["relation"] == 1.0 and wrong_side["relation"] == 0.0
    assert everything["share_out"] > 0 and specks["components_excess"] > 0
    return real, [wrong_side, everything, specks, empty]


def test_the_critic_prefers_the_real_mask_to_implausible_ones(jsrt):
    real, others = _implausible(jsrt)
    unfitted = Priors(load_priors().concepts, FEATURES, DEFAULT_COEF, DEFAULT_INTERCEPT)
    score = critic_score(real, unfitted)
    assert 0.0 < score < 1.0
    for other in others:
        assert critic_score(other, unfitted) < score


def test_the_shipped_critic_keeps_each_feature_to_its_direction(jsrt):
    priors = load_priors()
    assert all(SIGNS[f] * c >= 0 for f, c in zip(priors.features, priors.coef, strict=True))
    real, others = _implausible(jsrt)
    assert all(critic_score(other) <= critic_score(real) for other in others)


def test_an_empty_mask_is_right_when_the_model_says_absent(jsrt):
    empty = np.zeros_like(jsrt["lung"])
    assert critic_score(features("heart", empty, 0.02)) > critic_score(
        features("heart", empty, 0.98)
    )


def test_slice_continuity_of_a_real_volume(shared_data):
    label = read_volume(shared_data / "volumes/brats2015/brats_2013_pat0005/brain_tumor.nii.gz") > 0
    assert continuity(label, planar=False) == 1.0
    z = np.flatnonzero(label.any(axis=(1, 2)))
    gap = label.copy()
    gap[z[len(z) // 2]] = False
    assert continuity(gap, planar=False) == 0.5
    assert continuity(label[z[0]], planar=True) == 1.0


def test_fit_coefficients_learns_the_signal():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        row = {f: float(rng.random()) for f in FEATURES}
        row["label"] = int(row["presence_agree"] + 0.2 * rng.standard_normal() > 0.5)
        rows.append(row)
    coef, _ = fit_coefficients(rows)
    assert coef[FEATURES.index("presence_agree")] > 2 * max(abs(c) for c in coef[1:])
    assert all(SIGNS[f] * c >= 0 for f, c in zip(FEATURES, coef, strict=True))
    flipped = [{**r, "relation": 1.0 - r["presence_agree"]} for r in rows]
    coef, _ = fit_coefficients(flipped)  # relation would get a negative weight: held at 0
    assert coef[FEATURES.index("relation")] == 0.0


def test_agent_config_values():
    assert AgentConfig.from_value(None) is None and AgentConfig.from_value("off") is None
    assert AgentConfig.from_value("rules").mode == "rules"
    assert AgentConfig.from_value({"mode": "mllm", "max_rounds": 1}).max_rounds == 1
    with pytest.raises(ValueError, match="unknown agent settings"):
        AgentConfig.from_value({"mode": "rules", "rounds": 3})
    with pytest.raises(ValueError, match="mode"):
        AgentConfig(mode="magic")
