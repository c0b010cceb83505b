"""Scores of an evaluation run: Dice by pair, concept, modality and dataset; presence MCC and
calibration (expected calibration error, reliability bins); modality recognition; synonyms."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from medsam3.training.validate import matthews


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    den = pred.sum() + gt.sum()
    return 1.0 if den == 0 else float(2 * np.logical_and(pred, gt).sum() / den)


def bootstrap_ci(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of paired differences (NaN when empty)."""
    if len(diff) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, size=(n, len(diff)), replace=True).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Reliability bins and expected calibration error of presence probabilities.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) probabilities.
        bins: equal-width bins over [0, 1].

    Returns:
        {"ece": sum over bins of (bin share x |accuracy - confidence|), "bins": [{"lo", "hi",
        "n", "confidence", "accuracy"}] for non-empty bins}.
    """
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if not sel.any():
            continue
        conf, acc = float(p[sel].mean()), float(y[sel].mean())
        ece += sel.mean() * abs(acc - conf)
        rows.append(
            {
                "lo": edges[b],
                "hi": edges[b + 1],
                "n": int(sel.sum()),
                "confidence": round(conf, 4),
                "accuracy": round(acc, 4),
            }
        )
    return {"ece": round(float(ece), 4), "bins": rows}


def _mean_by(rows: list[dict], key: str, value: str = "dice") -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[r[key]].append(r[value])
    return {k: {"n": len(v), value: round(float(np.mean(v)), 4)} for k, v in sorted(groups.items())}


def summarise_images(images: dict, threshold: float = 0.5) -> dict:
    """Aggregate the rows of :func:`medsam3.training.evaluate.eval_images`.

    Args:
        images: the rows.
        threshold: the model's presence threshold (MCC counts presence >= it as "present").

    Returns:
        Means over pairs and concepts, MCC (all negatives and hard ones only), per-concept,
        per-modality (Dice, MCC, ECE) and per-dataset tables, modality accuracy, synonym Dice.
    """
    pairs, presence = images["pairs"], images["presence"]
    if not pairs:
        return {"n_pairs": 0}
    y = np.array([r["label"] for r in presence])
    p = np.array([r["presence"] for r in presence])
    hard = np.array([r["kind"] != "easy" for r in presence])
    per_concept = _mean_by(pairs, "concept")
    for c, row in per_concept.items():
        row["box_dice"] = round(
            float(np.mean([q["box_dice"] for q in pairs if q["concept"] == c])), 4
        )
    mean_dice = float(np.mean([q["dice"] for q in pairs]))
    mean_box = float(np.mean([q["box_dice"] for q in pairs]))
    out = {
        "n_pairs": len(pairs),
        "mean_dice_pairs": round(mean_dice, 4),
        "mean_dice_concepts": round(float(np.mean([r["dice"] for r in per_concept.values()])), 4),
        "mean_gt_box_dice": round(mean_box, 4),
        "text_to_box_ratio": round(mean_dice / max(mean_box, 1e-9), 4),
        "presence_threshold": threshold,
        "presence_mcc": round(matthews(y, p >= threshold), 4),
        "presence_mcc_hard": round(matthews(y[hard], p[hard] >= threshold), 4),
        "presence_n_pos": int(y.sum()),
        "presence_n_neg": int((1 - y).sum()),
        "per_concept": per_concept,
        "per_dataset": _mean_by(pairs, "dataset"),
        "per_modality": _per_modality(pairs, presence, threshold),
        "calibration": reliability(y, p),
    }
    out |= _modality_accuracy(images.get("modality", []))
    synonyms = [r["dice"] for r in images.get("synonyms", [])]
    if synonyms:
        out["synonym_dice_min"] = round(float(np.min(synonyms)), 4)
        out["synonym_dice_mean"] = round(float(np.mean(synonyms)), 4)
        out["synonym_pairs"] = len(synonyms)
    return out


def _per_modality(pairs: list[dict], presence: list[dict], threshold: float) -> dict:
    table = _mean_by(pairs, "modality")
    for m, row in table.items():
        sel = [r for r in presence if r["modality"] == m]
        y = np.array([r["label"] for r in sel])
        p = np.array([r["presence"] for r in sel])
        row["mcc"] = round(matthews(y, p >= threshold), 4)
        row["ece"] = reliability(y, p)["ece"]
    return table


def _modality_accuracy(rows: list[dict]) -> dict:
    if not rows:
        return {}
    right = [r["predicted"] == r["modality"] for r in rows]
    confusions: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["predicted"] != r["modality"]:
            confusions[f"{r['modality']} -> {r['predicted']}"] += 1
    return {
        "modality_accuracy": round(float(np.mean(right)), 4),
        "modality_n": len(rows),
        "modality_confusions": dict(confusions),
    }


def markdown(summary: dict) -> str:
    """Markdown tables of a summary (images, then video and volumes)."""
    lines = []
    if summary.get("n_pairs"):
        lines += [
            f"- pairs: {summary['n_pairs']}; mean Dice over pairs "
            f"**{summary['mean_dice_pairs']:.3f}**, over concepts "
            f"{summary['mean_dice_concepts']:.3f}",
            f"- LiteMedSAM with GT boxes: {summary['mean_gt_box_dice']:.3f}; "
            f"text/GT-box ratio **{summary['text_to_box_ratio']:.3f}**",
            f"- presence MCC **{summary['presence_mcc']:.3f}** ({summary['presence_n_pos']} "
            f"positives, {summary['presence_n_neg']} negatives); positives vs same-dataset "
            f"negatives only {summary['presence_mcc_hard']:.3f}; ECE "
            f"{summary['calibration']['ece']:.3f}",
        ]
        if "modality_accuracy" in summary:
            lines.append(
                f"- modality recognised: {summary['modality_accuracy']:.3f} of "
                f"{summary['modality_n']} images {summary['modality_confusions']}"
            )
        if "synonym_pairs" in summary:
            lines.append(
                f"- synonym vs concept mask Dice: min {summary['synonym_dice_min']:.3f}"
                f", mean {summary['synonym_dice_mean']:.3f} over "
                f"{summary['synonym_pairs']} pairs"
            )
        lines += ["", "| modality | pairs | Dice | presence MCC | ECE |", "|---|---|---|---|---|"]
        lines += [
            f"| {m} | {r['n']} | {r['dice']:.3f} | {r['mcc']:.3f} | {r['ece']:.3f} |"
            for m, r in summary["per_modality"].items()
        ]
        lines += ["", "| dataset | pairs | Dice |", "|---|---|---|"]
        lines += [
            f"| {d} | {r['n']} | {r['dice']:.3f} |" for d, r in summary["per_dataset"].items()
        ]
        lines += ["", "| concept | n | Dice (text) | Dice (GT box) |", "|---|---|---|---|"]
        lines += [
            f"| {c} | {r['n']} | {r['dice']:.3f} | {r['box_dice']:.3f} |"
            for c, r in summary["per_concept"].items()
        ]
    extra = {**summary.get("video", {}), **summary.get("volumes", {})}
    if extra:
        lines += ["", "| video / volume concept | Dice |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in extra.items()]
    return "\n".join(lines) + "\n"
