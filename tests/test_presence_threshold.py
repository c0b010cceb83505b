"""The presence threshold for unseen datasets: any threshold scored from one evaluation in which
every pair was segmented, the choice, its per-fold cross-check, and the head that carries it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medsam3.models.compact import build_compact, default_checkpoint
from medsam3.training import presence_threshold
from medsam3.training.evaluate import main as evaluate_main


def _evaluation(fold: str, dice, pair_presence, label, presence) -> dict:
    return {
        "fold": fold,
        "dataset": f"{fold}-set",
        "dice": np.array(dice, float),
        "pair_presence": np.array(pair_presence, float),
        "label": np.array(label),
        "presence": np.array(presence, float),
    }


def test_a_pair_below_the_threshold_scores_as_an_empty_mask():
    e = _evaluation("a", [0.8, 0.6], [0.9, 0.3], [1, 1, 0, 0], [0.9, 0.3, 0.2, 0.6])
    strict, lenient = presence_threshold.score([e], 0.5), presence_threshold.score([e], 0.25)
    assert strict["dice"] == pytest.approx(0.4) and strict["mcc"] == pytest.approx(0.0)
    assert lenient["dice"] == pytest.approx(0.7)
    assert lenient["mcc"] == pytest.approx(2 / np.sqrt(12), abs=1e-4)  # tp 2, fp 1, tn 1


def test_the_choice_and_its_cross_check_per_fold():
    # fold a: its positives sit at 0.3, negatives at 0.1 -> wants a low threshold;
    # fold b: positives 0.9, a negative at 0.4 -> wants one above 0.4
    a = _evaluation("a", [0.9, 0.9], [0.3, 0.3], [1, 1, 0, 0], [0.3, 0.3, 0.1, 0.1])
    b = _evaluation("b", [0.9, 0.9], [0.9, 0.9], [1, 1, 0, 0], [0.9, 0.9, 0.4, 0.1])
    chosen, rows = presence_threshold.choose([a, b], thresholds=(0.2, 0.3, 0.5))
    assert chosen == 0.3, rows  # Dice 0.9 in both and the negative at 0.4 passes only below 0.4
    check = {r["fold"]: r for r in presence_threshold.cross_check([a, b], thresholds=(0.2, 0.5))}
    assert check["a"]["chosen_on_other_folds"] == 0.5, "b alone: 0.2 and 0.5 tie, the higher"
    assert check["a"]["dice_at_chosen"] == 0.0 and check["b"]["chosen_on_other_folds"] == 0.2
    assert presence_threshold.cross_check([a]) == [], "one fold has no other folds to choose on"
    with_val = presence_threshold.choose(
        [a], val=_evaluation("val", [0.9], [0.9], [1, 0], [0.9, 0.25]), thresholds=(0.2, 0.3)
    )
    assert with_val[0] == 0.3 and with_val[1][0]["val_mcc"] == 0.0  # val's negative at 0.25


@pytest.mark.shared_data
def test_an_ungated_evaluation_reproduces_a_gated_one_and_the_head_takes_the_threshold(
    shared_data, tmp_path
):
    dataset = "JSRT + SCR (HybridGNet landmarks)"
    common = ["--data", str(shared_data), "--split", "all", "--datasets", dataset]
    common += ["--max-items", "3", "--no-synonyms"]
    ungated = tmp_path / "lodo" / "a" / "jsrt" / presence_threshold.UNGATED
    evaluate_main([*common, "--presence-threshold", "0", "--out", str(ungated)])
    (e,) = presence_threshold.read_ungated(tmp_path / "lodo")
    assert e["fold"] == "a" and e["dice"].size >= 3
    # a threshold between two of the positives' presences, so that one is gated and one is not
    values = np.unique(e["pair_presence"])
    assert values.size >= 2, e["pair_presence"]
    t = round(float((values[0] + values[1]) / 2), 4)
    evaluate_main([*common, "--presence-threshold", str(t), "--out", str(tmp_path / "gated")])
    gated = json.loads((tmp_path / "gated" / "summary.json").read_text())
    expected = presence_threshold.score([e], t)
    assert gated["summary"]["presence_threshold"] == t
    assert gated["summary"]["mean_dice_pairs"] == pytest.approx(expected["dice"], abs=1e-4)
    assert gated["summary"]["presence_mcc"] == pytest.approx(expected["mcc"], abs=1e-4)
    with pytest.raises(FileNotFoundError, match="presence-threshold 0"):
        presence_threshold.read_evaluation(tmp_path / "gated")

    head = tmp_path / "head" / "compact_head.safetensors"
    head.parent.mkdir()
    shutil.copy(default_checkpoint(), head)
    shutil.copy(default_checkpoint().with_suffix(".json"), head.with_suffix(".json"))
    presence_threshold.main([str(tmp_path / "lodo"), "--head", str(head)])
    chosen = presence_threshold.fit(tmp_path / "lodo")["presence_threshold"]
    assert build_compact(head).presence_threshold == chosen
