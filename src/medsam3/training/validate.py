"""Validation of a concept head on encoded val views: dense-mask Dice and presence MCC."""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import numpy as np
import torch

from medsam3.models.compact import load_head
from medsam3.models.concept_head import ConceptHead
from medsam3.models.litemedsam import LiteMedSAM
from medsam3.training.config import load_config
from medsam3.training.data import easy_negatives
from medsam3.training.phrases import PhraseTable
from medsam3.training.views import training_views


def matthews(y: np.ndarray, pred: np.ndarray) -> float:
    """Matthews correlation of two boolean vectors (0 when undefined)."""
    y, pred = y.astype(bool), pred.astype(bool)
    tp, tn = float(np.sum(y & pred)), float(np.sum(~y & ~pred))
    fp, fn = float(np.sum(~y & pred)), float(np.sum(y & ~pred))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den > 0 else 0.0


@torch.no_grad()
def presence_logits(head: ConceptHead, data: dict, phrases, easy: dict, seed: int = 0) -> dict:
    """Presence logits and dense Dice of every val view's positives and negatives.

    Negatives per view: all its hard negatives (same dataset, absent) and two easy ones
    (other modality and body part), drawn with a fixed seed.

    Returns:
        {"logit": (n,) float, "label": (n,) 0/1, "modality": [n], "kind": ["pos" | "hard" |
        "easy"], "dice": {concept: [Dice of each positive's dense mask at 256 px]},
        "modality_dice": {modality: [the same Dice values]}}.
    """
    was_training = head.training
    head.eval()
    rng = random.Random(seed)
    dev = next(head.parameters()).device
    out = {"logit": [], "label": [], "modality": [], "kind": [], "dice": defaultdict(list)}
    out["modality_dice"] = defaultdict(list)
    for s in range(len(data["meta"])):
        emb, frame = data["emb"][s : s + 1].to(dev).float(), data["frame"][s : s + 1].to(dev)
        feats = head.image_features(emb, frame / 255)
        pos = [p for p in data["pos"] if p[0] == s]
        hard = data["hard"][s]
        easy_names = easy_negatives(data["meta"][s], easy, rng, 2)
        if pos:
            text = torch.stack([phrases.vector(p[1]) for p in pos]).to(dev)
            logits, masks = head.decode(feats, text)
            for k, p in enumerate(pos):
                pred, gt = masks[k, 0] > 0, p[2].to(dev) > 127
                inter = 2 * (pred & gt).sum().item()
                value = inter / max(1, pred.sum().item() + gt.sum().item())
                out["dice"][p[1]].append(value)
                out["modality_dice"][data["meta"][s][0]].append(value)
            _extend(out, logits, 1, data["meta"][s][0], "pos")
        for kind, names in (("hard", hard), ("easy", easy_names)):
            if names:
                text = torch.stack([phrases.vector(c) for c in names]).to(dev)
                logits, _ = head.decode(feats, text, None, True)
                _extend(out, logits, 0, data["meta"][s][0], kind)
    head.train(was_training)
    out["logit"], out["label"] = np.array(out["logit"]), np.array(out["label"])
    return out


def _extend(out: dict, logits: torch.Tensor, label: int, modality: str, kind: str) -> None:
    out["logit"] += logits.tolist()
    out["label"] += [label] * len(logits)
    out["modality"] += [modality] * len(logits)
    out["kind"] += [kind] * len(logits)


def validate(head: ConceptHead, data: dict, phrases, easy: dict) -> dict:
    """Dense-mask Dice over val positives and presence MCC over positives and negatives.

    Returns:
        {"dice": mean Dice over pairs (frame resolution), "concept_dice": mean of per-concept
        means, "mcc": presence MCC at 0.5, "mcc_hard": MCC over positives and hard negatives
        only, "score": mean of the two Dice figures + mcc}.
    """
    res = presence_logits(head, data, phrases, easy)
    pred = res["logit"] > 0
    hard = np.array([k != "easy" for k in res["kind"]])
    pair = float(np.mean([d for ds in res["dice"].values() for d in ds]))
    concept = float(np.mean([np.mean(ds) for ds in res["dice"].values()]))
    mcc = matthews(res["label"], pred)
    return {
        "dice": round(pair, 4),
        "concept_dice": round(concept, 4),
        "mcc": round(mcc, 4),
        "mcc_hard": round(matthews(res["label"][hard], pred[hard]), 4),
        "score": round((pair + concept) / 2 + mcc, 4),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the val Dice (dense mask at 256 px) of each given head, over pairs and per modality.

    Usage: ``python -m medsam3.training.validate HEAD.safetensors [HEAD2 ...]`` (the val views
    of configs/train_compact.yaml, encoded into the feature cache on first use).
    """
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("heads", nargs="+")
    ap.add_argument("--config", default="configs/train_compact.yaml")
    args = ap.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(config.get("threads", 2))
    val = training_views(config, "val", LiteMedSAM())
    for path in args.heads:
        head = load_head(path)[0]
        no_easy = {}  # Dice only: no easy negatives to draw (and no manifest to read for them)
        per = sorted(presence_logits(head, val, PhraseTable(0.0), no_easy)["modality_dice"].items())
        pairs = [d for _, values in per for d in values]
        print(f"{path}: Dice over {len(pairs)} val pairs {np.mean(pairs):.3f}")
        print("  " + ", ".join(f"{m} {np.mean(v):.3f} ({len(v)})" for m, v in per))


if __name__ == "__main__":
    main()
