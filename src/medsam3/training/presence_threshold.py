"""The presence threshold for data from datasets the head never saw, fitted leave-one-dataset-out.

Presence is calibrated on val, where 0.5 is the right cut. On a dataset left out of training
the positives' presence drops (the held-out datasets' median positive presence is 0.3-0.5
with the fold heads), so at 0.5 most of the lost Dice is presence turning a fair mask into an
empty one. Each fold head is evaluated on its held-out datasets with every pair segmented
(``evaluate --presence-threshold 0``); any threshold's Dice and MCC then follow from the rows
(a pair below the threshold gets an empty mask, Dice 0). The chosen threshold maximises mean
Dice over held-out datasets plus pooled presence MCC, plus, with ``--val``, Dice over pairs
plus MCC of the head itself on val (so that data like the training data keeps its presence
accuracy); a cross-check chooses it without each fold in turn and scores that fold.

Usage::

    python -m medsam3.training.lodo configs/lodo.yaml --presence-sweep   # the evaluations
    python -m medsam3.training.evaluate --split val --presence-threshold 0 --no-synonyms \
        --skip video volumes --checkpoint HEAD --out results/eval_val_ungated
    python -m medsam3.training.presence_threshold results/lodo \
        --val results/eval_val_ungated [--head HEAD.safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medsam3.training.head_file import update_head_info
from medsam3.training.validate import matthews

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.51, 0.05))
UNGATED = "ungated"  # <lodo out>/<fold>/<dataset slug>/ungated/summary.json


def read_ungated(lodo_dir: Path) -> list[dict]:
    """The fold heads' evaluations of their held-out datasets with every pair segmented.

    Returns:
        [{"fold", "dataset", "dice": (n,) per positive pair, "pair_presence": (n,),
        "label": (m,) 0/1 per presence row, "presence": (m,)}].

    Raises:
        FileNotFoundError: no evaluation, or one made with a presence threshold above 0.
    """
    paths = sorted(Path(lodo_dir).glob(f"*/*/{UNGATED}/summary.json"))
    if not paths:
        raise FileNotFoundError(f"no */*/{UNGATED}/summary.json under {lodo_dir}")
    return [read_evaluation(p.parent, fold=p.parts[-4], dataset=p.parts[-3]) for p in paths]


def read_evaluation(folder: Path, fold: str = "val", dataset: str = "val") -> dict:
    """The rows of one ``evaluate --presence-threshold 0`` output folder (see read_ungated)."""
    path = Path(folder) / "summary.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved["summary"].get("presence_threshold", 1.0) > 0:
        raise FileNotFoundError(f"{path} was not evaluated with --presence-threshold 0")
    images = saved["images"]
    return {
        "fold": fold,
        "dataset": dataset,
        "dice": np.array([r["dice"] for r in images["pairs"]]),
        "pair_presence": np.array([r["presence"] for r in images["pairs"]]),
        "label": np.array([r["label"] for r in images["presence"]]),
        "presence": np.array([r["presence"] for r in images["presence"]]),
    }


def score(evaluations: list[dict], threshold: float) -> dict:
    """Mean Dice over held-out datasets and pooled presence MCC at one threshold."""
    dice = [np.where(e["pair_presence"] >= threshold, e["dice"], 0.0).mean() for e in evaluations]
    y = np.concatenate([e["label"] for e in evaluations])
    p = np.concatenate([e["presence"] for e in evaluations])
    mcc = matthews(y, p >= threshold)
    return {
        "threshold": threshold,
        "dice": round(float(np.mean(dice)), 4),
        "mcc": round(float(mcc), 4),
        "objective": round(float(np.mean(dice)) + float(mcc), 4),
    }


def choose(
    evaluations: list[dict], val: dict | None = None, thresholds=THRESHOLDS
) -> tuple[float, list[dict]]:
    """The threshold with the best objective (ties: the higher one), and the whole sweep.

    Args:
        evaluations: held-out datasets (:func:`read_ungated`).
        val: the head's own val evaluation (:func:`read_evaluation`), or None.
        thresholds: the candidates.

    Returns:
        (threshold, rows): per candidate the held-out Dice and MCC, val's when given, and
        the objective (the sum of them all).
    """
    rows = []
    for t in thresholds:
        row = score(evaluations, t)
        if val is not None:
            inside = score([val], t)
            row |= {"val_dice": inside["dice"], "val_mcc": inside["mcc"]}
            row["objective"] = round(row["objective"] + inside["objective"], 4)
        rows.append(row)
    best = max(rows, key=lambda r: (r["objective"], r["threshold"]))
    return best["threshold"], rows


def cross_check(
    evaluations: list[dict], val: dict | None = None, thresholds=THRESHOLDS
) -> list[dict]:
    """Per fold: the threshold chosen on the other folds, and this fold's scores at it and 0.5
    (nothing with a single fold)."""
    folds = sorted({e["fold"] for e in evaluations})
    if len(folds) < 2:
        return []
    rows = []
    for fold in folds:
        inside = [e for e in evaluations if e["fold"] == fold]
        chosen, _ = choose([e for e in evaluations if e["fold"] != fold], val, thresholds)
        at_half, at_chosen = score(inside, 0.5), score(inside, chosen)
        rows.append(
            {
                "fold": fold,
                "datasets": len(inside),
                "chosen_on_other_folds": chosen,
                "dice_at_0.5": at_half["dice"],
                "dice_at_chosen": at_chosen["dice"],
                "mcc_at_0.5": at_half["mcc"],
                "mcc_at_chosen": at_chosen["mcc"],
            }
        )
    return rows


def fit(lodo_dir: Path, val_dir: Path | None = None) -> dict:
    """Everything the head JSON keeps: the threshold, the sweep and the per-fold check."""
    evaluations = read_ungated(lodo_dir)
    val = read_evaluation(val_dir) if val_dir else None
    threshold, sweep = choose(evaluations, val)
    return {
        "presence_threshold": threshold,
        "presence_threshold_lodo": {
            "datasets": len(evaluations),
            "with_val": val is not None,
            "sweep": sweep,
            "cross_check": cross_check(evaluations, val),
        },
    }


def markdown(facts: dict) -> str:
    """The sweep and the cross-check as markdown tables."""
    lodo = facts["presence_threshold_lodo"]
    lines = [
        f"Chosen presence threshold: **{facts['presence_threshold']}** "
        f"({lodo['datasets']} held-out datasets{', and val' if lodo['with_val'] else ''})",
        "",
        "| threshold | held-out: mean Dice over datasets | pooled presence MCC "
        "| val: Dice over pairs | val MCC | sum |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['threshold']:.2f} | {r['dice']:.3f} | {r['mcc']:.3f} | "
        f"{r.get('val_dice', float('nan')):.3f} | {r.get('val_mcc', float('nan')):.3f} | "
        f"{r['objective']:.3f} |"
        for r in lodo["sweep"]
    ]
    if not lodo["cross_check"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| fold | datasets | chosen on the other folds | Dice at 0.5 -> chosen "
        "| MCC at 0.5 -> chosen |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['fold']} | {r['datasets']} | {r['chosen_on_other_folds']:.2f} | "
        f"{r['dice_at_0.5']:.3f} -> {r['dice_at_chosen']:.3f} | "
        f"{r['mcc_at_0.5']:.3f} -> {r['mcc_at_chosen']:.3f} |"
        for r in lodo["cross_check"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """CLI: print the sweep; with --head, write the threshold into that head's JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lodo_dir", help="a LODO output folder with --presence-sweep evaluations")
    ap.add_argument("--val", default=None, help="the head's own val evaluation (threshold 0)")
    ap.add_argument("--head", default=None, help="head .safetensors whose JSON gets the threshold")
    args = ap.parse_args(argv)
    facts = fit(Path(args.lodo_dir), Path(args.val) if args.val else None)
    print(markdown(facts))
    if args.head:
        print(f"wrote {update_head_info(Path(args.head), facts)}")


if __name__ == "__main__":
    main()
