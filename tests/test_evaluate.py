"""Evaluation scores: Dice, calibration error and the tables by modality and dataset."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.training.scores import dice, reliability, summarise_images


def test_dice_of_empty_and_overlapping_masks():
    a = np.zeros((4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[:2] = True
    c = a.copy()
    c[1:3] = True
    assert dice(b, c) == 0.5 and dice(b, a) == 0.0


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)  # labels drawn with probability p
    assert reliability(y, p)["ece"] < 0.02
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    assert reliability(y, overconfident)["ece"] > 0.2
    bins = reliability(y, p)["bins"]
    assert sum(b["n"] for b in bins) == p.size and len(bins) == 10


def test_summary_tables_by_modality_dataset_and_concept():
    pairs = [
        {
            "item": "a",
            "concept": "lung",
            "dataset": "X",
            "modality": "xray",
            "dice": 0.9,
            "box_dice": 0.95,
            "presence": 0.9,
        },
        {
            "item": "b",
            "concept": "lung",
            "dataset": "Y",
            "modality": "xray",
            "dice": 0.7,
            "box_dice": 0.9,
            "presence": 0.8,
        },
        {
            "item": "c",
            "concept": "liver",
            "dataset": "Z",
            "modality": "ct",
            "dice": 0.5,
            "box_dice": 0.8,
            "presence": 0.6,
        },
    ]
    presence = [
        {
            "label": 1,
            "presence": r["presence"],
            "kind": "pos",
            "modality": r["modality"],
            "concept": r["concept"],
            "dataset": r["dataset"],
        }
        for r in pairs
    ]
    presence += [
        {
            "label": 0,
            "presence": 0.7,
            "kind": "hard",
            "modality": "ct",
            "concept": "spleen",
            "dataset": "Z",
        },
        {
            "label": 0,
            "presence": 0.1,
            "kind": "easy",
            "modality": "xray",
            "concept": "polyp",
            "dataset": "X",
        },
    ]
    modality = [
        {"item": "a", "modality": "xray", "predicted": "xray", "confidence": 0.9},
        {"item": "c", "modality": "ct", "predicted": "mri", "confidence": 0.6},
    ]
    synonyms = [{"concept": "lung", "synonym": "lungs", "dice": 1.0}]
    s = summarise_images(
        {"pairs": pairs, "presence": presence, "modality": modality, "synonyms": synonyms}
    )
    assert s["mean_dice_pairs"] == pytest.approx(0.7)
    assert s["mean_dice_concepts"] == pytest.approx((0.8 + 0.5) / 2)
    assert s["per_modality"]["xray"]["dice"] == pytest.approx(0.8)
    assert s["per_modality"]["ct"]["n"] == 1 and s["per_dataset"]["Y"]["dice"] == 0.7
    assert s["presence_mcc_hard"] < s["presence_mcc"], "the hard negative is the false alarm"
    assert s["modality_accuracy"] == 0.5 and s["modality_confusions"] == {"ct -> mri": 1}
    assert s["synonym_dice_min"] == 1.0
    # present = presence >= the model's threshold: at 0.5 the hard negative (0.7) is a false
    # alarm (tp 3, fp 1, tn 1); at 0.75 it is not, and the positive at 0.6 is missed instead
    assert s["presence_threshold"] == 0.5 and s["presence_mcc"] == pytest.approx(3 / 24**0.5, 1e-3)
    high = summarise_images({"pairs": pairs, "presence": presence}, threshold=0.75)
    assert high["presence_mcc"] == pytest.approx(4 / 6, abs=1e-3)
    assert high["per_modality"]["xray"]["mcc"] == 1.0 and s["per_modality"]["xray"]["mcc"] == 1.0


def test_the_train_split_is_scored_on_training_items_only(shared_data, tmp_path):
    import csv
    import json

    from medsam3.training.evaluate import main

    out = tmp_path / "eval"
    args = ["--data", str(shared_data), "--split", "train", "--datasets", "PH2"]
    main(
        args
        + ["--max-items", "2", "--skip", "video", "volumes", "--no-synonyms"]
        + ["--out", str(out)]
    )
    pairs = json.loads((out / "summary.json").read_text())["images"]["pairs"]
    with (shared_data / "manifest.csv").open() as f:
        split = {r["item_id"]: r["split"] for r in csv.DictReader(f)}
    assert len({p["item"] for p in pairs}) == 2
    assert {split[p["item"]] for p in pairs} == {"train"}
    assert all(0.0 <= p["dice"] <= 1.0 for p in pairs)
