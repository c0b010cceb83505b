"""The agent's replacement rule (:mod:`medsam3.agent.gain`) and how the loop applies it.

The fit is checked on rows whose true gains are known (one action always helps, one always
hurts); the loop with real candidates and a given rule; the shipped rule's file format.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from medsam3.agent.config import AgentConfig
from medsam3.agent.critic import FEATURES
from medsam3.agent.gain import MARGINS, GainModel, fit_gain, fit_ridge, input_names
from medsam3.agent.loop import run_loop
from medsam3.agent.planner import Action, Candidate
from medsam3.agent.priors import Priors, load_priors
from medsam3.training.scores import dice


def _features(rng: random.Random) -> dict:
    values = {f: rng.random() for f in FEATURES}
    return values | {"critic": rng.random()}


def _rows(n_datasets: int = 5, per_dataset: int = 12, seed: int = 0) -> list[dict]:
    """Pairs where "drop" gains 0.1 Dice, "relax" loses 0.2 and "tighten" gains only when the
    current mask disagrees with the decoder (decoder_iou < 0.5)."""
    rng = random.Random(seed)
    rows = []
    for d in range(n_datasets):
        for _ in range(per_dataset):
            now = _features(rng)
            dice = rng.uniform(0.3, 0.7)
            tighten = 0.15 if now["decoder_iou"] < 0.5 else -0.15
            cands = []
            for action, gain in (("drop", 0.1), ("relax", -0.2), ("tighten", tighten)):
                new = _features(rng) | {"critic": now["critic"] + 0.1}
                noisy = gain + rng.gauss(0, 0.01)
                cands.append(
                    {"action": action, "dice": dice + noisy, "features": new, "overlap": 0.8}
                )
            rows.append(
                {
                    "dataset": f"d{d}",
                    "annotated": True,
                    "dice": dice,
                    "current": now,
                    "candidates": cands,
                }
            )
    return rows


def test_ridge_recovers_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3
    w, b = fit_ridge(x, y, alpha=1e-6)
    assert np.allclose(w, [1.0, -2.0, 0.5], atol=1e-4) and abs(b - 0.3) < 1e-4


def test_the_fitted_rule_picks_what_helps_and_skips_what_hurts():
    rows = _rows()
    model, cv = fit_gain(rows, FEATURES, "synthetic rows")
    assert set(cv) == set(MARGINS) and model.margin in MARGINS
    # the best candidate per pair gains 0.1 (drop) or 0.15 (tighten): cross-validated,
    # each dataset scored by a rule that never saw it, the rule keeps most of it
    assert cv[model.margin] > 0.09
    now = rows[0]["current"]
    new = rows[0]["candidates"][0]["features"]
    assert model.expected_gain("drop", now, new, 0.8) > model.margin
    assert (
        model.expected_gain("relax", now, new, 0.8) < 0 < model.expected_gain("drop", now, new, 0.8)
    )
    assert "synthetic rows" in model.fitted_on and f"margin {model.margin}" in model.fitted_on


def test_candidates_the_critic_does_not_prefer_are_never_counted():
    rows = _rows()
    for r in rows:
        for c in r["candidates"]:
            c["features"]["critic"] = r["current"]["critic"] - 0.05  # the critic prefers none
    _, cv = fit_gain(rows, FEATURES, "synthetic rows")
    assert all(v == 0.0 for v in cv.values())


def test_the_rule_round_trips_and_refuses_other_inputs():
    model, _ = fit_gain(_rows(), FEATURES, "synthetic rows")
    data = model.to_json()
    assert data["inputs"] == input_names(FEATURES) and len(data["coef"]) == len(data["inputs"])
    assert GainModel.from_json(data) == model
    priors = Priors(load_priors().concepts, FEATURES, (0.0,) * len(FEATURES), 0.0, "x", model)
    assert Priors.from_json(priors.to_json()) == priors
    with pytest.raises(ValueError, match="inputs do not match"):
        GainModel.from_json({**data, "inputs": data["inputs"][:-1]})


def test_the_loop_replaces_only_what_the_rule_expects_to_gain():
    """Two candidates the critic prefers; the rule vetoes the one it expects to lose Dice."""
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    initial = Candidate(mask, 0.9)
    made = {
        "relax": Candidate(np.ones((8, 8), bool), 0.9, "relax"),
        "drop": Candidate(mask.copy(), 0.9, "drop"),
    }
    scores = {"model": 0.3, "relax": 0.9, "drop": 0.5}

    def propose(current, rnd, budget):
        if current is not initial:
            return []
        return [Action(n, "test", lambda c=c: c) for n, c in made.items()]

    def judge(c):
        c.features, c.score = {}, scores[c.action]

    config = AgentConfig(max_rounds=2, accept=0.95)
    plain = run_loop("liver", initial, propose, judge, config)
    assert plain.final.action == "relax"  # the critic alone takes the higher score
    gains = {"relax": -0.2, "drop": 0.05}
    ruled = run_loop("liver", initial, propose, judge, config, lambda cur, c: gains[c.action])
    assert ruled.final.action == "drop"
    rows = [r for r in ruled.trace if r["action"] == "relax"]
    assert rows[0]["decision"] == "rejected" and "expected Dice gain -0.200" in rows[0]["reason"]
    vetoed = run_loop("liver", initial, propose, judge, config, lambda cur, c: -0.01)
    assert not vetoed.changed and vetoed.review


def test_the_shipped_rule_matches_the_shipped_critic():
    priors = load_priors()
    assert priors.gain is not None, "agent_priors.json has no replacement rule"
    assert priors.gain.features == priors.features and priors.gain.margin in MARGINS
    assert priors.gain.fitted_on.startswith(priors.fitted_on)


def test_candidate_rows_on_real_val_images(shared_data):
    """Every first-round action runs on a real image; its Dice is against the real mask."""
    import medsam3
    from medsam3.agent.fit import (
        candidate_rows,
        dataset_concepts,
        fit_critic,
        fit_replacement,
        val_samples,
    )

    agent = medsam3.load_model("compact", agent={"mode": "rules", "max_rounds": 0})
    samples = [s for s in val_samples(shared_data, "val", 1, None) if s.dataset == "BUS-BRA"]
    assert samples, "no BUS-BRA val image in the shared data"
    absent = [c for c in dataset_concepts(shared_data)["BUS-BRA"] if c not in samples[0].masks]
    rows = candidate_rows(agent, samples[0], absent[:1])
    off = agent.base.segment(samples[0].load_rgb(), [r["concept"] for r in rows], kind="image")
    assert len(rows) == len(samples[0].masks) + 1 and not rows[-1]["annotated"]
    for r in rows:
        gt = samples[0].masks[r["concept"]]() if r["annotated"] else None
        mask = off[r["concept"]].mask.astype(bool)
        assert r["present_off"] == bool(mask.any())
        if gt is not None:
            assert r["dice_off"] == pytest.approx(dice(mask, gt))
        actions = {c["action"].split(":")[0] for c in r["candidates"]}
        if mask.any():  # every action, not only those the critic's features call for
            assert {"box", "relax", "tighten", "crop_zoom"} <= actions
        for c in r["candidates"]:
            assert 0.0 <= c["dice"] <= 1.0 and 0.0 <= c["overlap"] <= 1.0
            assert set(c["features"]) == set(FEATURES)
    if any(r["candidates"] for r in rows if r["annotated"]):
        priors, cv = fit_replacement(rows, fit_critic(rows, "one BUS-BRA image"))
        assert priors.gain is not None and set(cv) == set(MARGINS)
