"""The rules agent against the backend alone, same encodings, on a split of the shared data.

One agent run per image gives both arms: "off" is the compact backend's own result (kept by the
agent as its raw mask), "rules" the agent's. Pairs: each annotated (image, concept) and
``--hard`` concepts annotated elsewhere in the image's dataset (negatives). Reported:

- Dice over annotated pairs, off and rules, with a paired bootstrap 95% CI of the difference;
- presence MCC (a non-empty mask as the prediction) over all pairs;
- per-concept Dice deltas; replaced and flagged-for-review shares;
- the critic's AUROC for Dice < 0.5 (annotated pairs; 1 - critic_off as the score) and for a
  wrong result (all pairs);
- extra encodings and seconds per image (the agent's share of the wall time).

Choose on the val split (the critic and the replacement rule are fitted there); read the test
split once per shipped agent. A small subset on a busy CPU:

    PYTHONPATH=src python benchmarks/agent.py --data ../shared/data --per-dataset 2 --limit 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mcc(pred: np.ndarray, truth: np.ndarray) -> float:
    """Matthews correlation of two bool arrays (0 when undefined)."""
    tp = float(np.sum(pred & truth))
    tn = float(np.sum(~pred & ~truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def cross_fitted_auroc(rows: list[dict], folds: int = 2) -> float:
    """AUROC for a wrong result of critics refitted with images split into folds (each fold
    scored by the critic fitted on the others): the shipped critic was fitted on val too."""
    from medsam3.agent.critic import FEATURES, fit_coefficients

    items = sorted({r["item"] for r in rows})
    fold_of = {item: i % folds for i, item in enumerate(items)}
    scores, labels = [], []
    for k in range(folds):
        train = [r for r in rows if fold_of[r["item"]] != k]
        test = [r for r in rows if fold_of[r["item"]] == k]
        data = [{**{f: r[f"f_{f}"] for f in FEATURES}, "label": int(_right(r))} for r in train]
        coef, bias = fit_coefficients(data)
        for r in test:
            z = bias + sum(c * r[f"f_{f}"] for c, f in zip(coef, FEATURES, strict=True))
            scores.append(-z)
            labels.append(not _right(r))
    return auroc(np.array(scores), np.array(labels))


def summarise(rows: list[dict]) -> dict:
    """The benchmark's numbers from :func:`medsam3.agent.fit.score_split` rows."""
    from medsam3.training.scores import bootstrap_ci

    ann = [r for r in rows if r["annotated"]]
    off = np.array([r["dice_off"] for r in ann])
    rules = np.array([r["dice_rules"] for r in ann])
    truth = np.array([r["annotated"] for r in rows])
    images = {r["item"] for r in rows}
    seconds = sum(r["seconds"] for r in rows)
    agent_s = sum(r["agent_seconds"] for r in rows)
    per_concept = {}
    for c in sorted({r["concept"] for r in ann}):
        d = [r["dice_rules"] - r["dice_off"] for r in ann if r["concept"] == c]
        per_concept[c] = {"pairs": len(d), "delta_dice": round(float(np.mean(d)), 4)}
    critic = np.array([r["critic_off"] for r in ann])
    all_critic = np.array([r["critic_off"] for r in rows])
    wrong = np.array([not _right(r) for r in rows])
    return {
        "images": len(images),
        "pairs": len(rows),
        "annotated_pairs": len(ann),
        "dice_off": round(float(off.mean()), 4),
        "dice_rules": round(float(rules.mean()), 4),
        "delta_dice": round(float((rules - off).mean()), 4),
        "delta_dice_ci95": [round(v, 4) for v in bootstrap_ci(rules - off)],
        "mcc_off": round(mcc(np.array([r["present_off"] for r in rows]), truth), 4),
        "mcc_rules": round(mcc(np.array([r["present_rules"] for r in rows]), truth), 4),
        "critic_auroc_dice_below_0.5": round(auroc(1 - critic, off < 0.5), 4),
        "critic_auroc_wrong": round(auroc(1 - all_critic, wrong), 4),
        "critic_auroc_wrong_2fold": round(cross_fitted_auroc(rows), 4),
        "replaced_share": round(float(np.mean([r["action"] != "model" for r in rows])), 4),
        "review_share": round(float(np.mean([r["review"] for r in rows])), 4),
        "extra_encodings_per_image": round(sum(r["encodings"] for r in rows) / len(images), 3),
        "seconds_per_image_rules": round(seconds / len(images), 3),
        "seconds_per_image_off": round((seconds - agent_s) / len(images), 3),
        "per_concept": per_concept,
    }


def _right(row: dict) -> bool:
    return row["dice_off"] >= 0.5 if row["annotated"] else not row["present_off"]


def markdown(summary: dict) -> str:
    """The summary as a short Markdown table (per-concept deltas after it)."""
    lo, hi = summary["delta_dice_ci95"]
    lines = [
        "| metric | off | rules |",
        "|---|---|---|",
        f"| mean Dice ({summary['annotated_pairs']} annotated pairs) | {summary['dice_off']} | "
        f"{summary['dice_rules']} |",
        f"| Dice delta, paired bootstrap 95% CI | | {summary['delta_dice']} [{lo}, {hi}] |",
        f"| presence MCC ({summary['pairs']} pairs) | {summary['mcc_off']} | "
        f"{summary['mcc_rules']} |",
        f"| seconds per image | {summary['seconds_per_image_off']} | "
        f"{summary['seconds_per_image_rules']} |",
        f"| extra encodings per image | 0 | {summary['extra_encodings_per_image']} |",
        f"| results replaced / flagged for review | | {summary['replaced_share']} / "
        f"{summary['review_share']} |",
        f"| critic AUROC, Dice < 0.5 / wrong result | {summary['critic_auroc_dice_below_0.5']} / "
        f"{summary['critic_auroc_wrong']} | |",
        f"| critic AUROC, wrong result, refitted 2-fold by image | "
        f"{summary['critic_auroc_wrong_2fold']} | |",
        "",
        "| concept | pairs | Dice delta |",
        "|---|---|---|",
    ]
    for c, v in summary["per_concept"].items():
        lines.append(f"| {c} | {v['pairs']} | {v['delta_dice']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and optionally save) its summary."""
    from medsam3.agent.fit import score_split, val_samples
    from medsam3.agent.segmenter import wrap
    from medsam3.models.build import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--split", default="val", choices=["val", "train", "test"], help="test: once per agent"
    )
    parser.add_argument("--per-dataset", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="at most N images")
    parser.add_argument("--hard", type=int, default=1, help="negatives per image")
    parser.add_argument("--max-rounds", type=int, default=2)
    parser.add_argument("--accept", type=float, default=0.7)
    parser.add_argument("--checkpoint", default=None, help="compact head (default: shipped)")
    parser.add_argument("--out", type=Path, default=None, help="write rows + summary as JSON")
    parser.add_argument("--summarise", type=Path, default=None, help="re-summarise an --out file")
    args = parser.parse_args(argv)
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        print(markdown(summarise(saved["rows"]) | {"config": saved["summary"]["config"]}))
        return
    start = time.time()
    config = {"mode": "rules", "max_rounds": args.max_rounds, "accept": args.accept}
    base = load_model("compact", checkpoint=args.checkpoint, device="cpu")
    model = wrap(base, config)
    samples = val_samples(args.data, args.split, args.per_dataset, args.limit)
    rows = score_split(model, samples, args.data, args.hard)
    summary = summarise(rows) | {"config": config, "wall_s": round(time.time() - start, 1)}
    summary["head_sha256"] = base.checkpoint_digest
    print(markdown(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
