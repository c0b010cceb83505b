"""After the concept head: fit the modality classifier, the per-modality presence calibration,
the dense mask's cut and the concepts whose dense mask beats decoder refinement, all stored
with the head.

- modality classifier (:class:`medsam3.models.modality.ModalityHead`): trained on the training
  views' pooled features, chosen by val accuracy;
- presence calibration: per modality, a scale and a shift of the presence logit fitted on val
  (Platt scaling, pulled towards the identity where a modality has few val pairs), so that
  presence 0.5 means the same on CT as on dermoscopy;
- ``mask_margin``: the dense mask's cut where the head is unsure (peak logit - margin instead
  of 0, :meth:`medsam3.models.compact.CompactSegmenter.dense_threshold`), the candidate with
  the best val Dice;
- ``no_refine``: concepts whose val Dice is higher with the dense mask than with the LiteMedSAM
  decoder's refinement (at the chosen margin).

``python -m medsam3.training.fit_heads HEAD`` refits the last two for a trained head (JSON only).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsam3.models.compact import CompactSegmenter, build_compact
from medsam3.models.concept_head import ConceptHead
from medsam3.models.modality import ModalityHead, modality_features
from medsam3.training.config import load_config
from medsam3.training.head_file import save_head, update_head_info
from medsam3.training.scores import dice
from medsam3.training.validate import matthews, presence_logits
from medsam3.training.views import split_samples

MIN_CALIBRATION_ROWS = 30  # fewer val presence rows: the modality uses the default calibration


def fit_modality_head(train: dict, val: dict, epochs: int = 300, seed: int = 0) -> tuple:
    """Train the modality classifier on pooled view features (full batch, AdamW).

    Returns:
        (ModalityHead in eval mode with the best val accuracy, {"val_accuracy", "epoch"}).
    """
    torch.manual_seed(seed)
    classes = sorted({m[0] for m in train["meta"]})
    x, y = _features(train), torch.tensor([classes.index(m[0]) for m in train["meta"]])
    vx = _features(val)
    vy = np.array([classes.index(m[0]) if m[0] in classes else -1 for m in val["meta"]])
    head = ModalityHead(classes)
    weight = 1.0 / torch.bincount(y, minlength=len(classes)).clamp(min=1).float()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.05)
    best, best_state = (-1.0, 0), None
    for epoch in range(epochs):
        head.train()
        loss = F.cross_entropy(head(x), y, weight=weight / weight.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            acc = float(np.mean(head(vx).argmax(1).numpy() == vy))
        if acc > best[0]:
            best, best_state = (acc, epoch), {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval(), {"val_accuracy": round(best[0], 4), "epoch": best[1]}


def _features(data: dict) -> torch.Tensor:
    parts = []
    for i in range(0, len(data["meta"]), 256):
        emb = data["emb"][i : i + 256]
        frame = data["frame"][i : i + 256].float() / 255
        parts.append(modality_features(emb, frame, data["resized"][i : i + 256]))
    return torch.cat(parts)


def fit_calibration(head: ConceptHead, val: dict, phrases, easy: dict) -> dict:
    """Per-modality (scale, shift) of the presence logit on val, plus "default" over all.

    Returns:
        {"presence_calibration": {modality: [scale, shift]}, "calibration_val": {modality:
        {"n", "mcc_before", "mcc_after"}}}.
    """
    res = presence_logits(head, val, phrases, easy)
    z, y = torch.tensor(res["logit"]).float(), torch.tensor(res["label"]).float()
    default = _platt(z, y, prior=(1.0, 0.0), strength=1.0)
    table, report = {"default": default}, {}
    by_modality: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(res["modality"]):
        by_modality[m].append(i)
    for m, rows in sorted(by_modality.items()):
        sel = torch.tensor(rows)
        if len(rows) >= MIN_CALIBRATION_ROWS and 0 < y[sel].sum() < len(rows):
            table[m] = _platt(z[sel], y[sel], prior=default, strength=30.0 / len(rows))
        scale, shift = table.get(m, default)
        after = (z[sel] * scale + shift).numpy() > 0
        report[m] = {
            "n": len(rows),
            "mcc_before": round(matthews(y[sel].numpy(), z[sel].numpy() > 0), 4),
            "mcc_after": round(matthews(y[sel].numpy(), after), 4),
        }
    return {"presence_calibration": table, "calibration_val": report}


def _platt(z, y, prior: tuple[float, float], strength: float) -> list[float]:
    """Scale and shift minimising BCE + strength * squared distance to the prior."""
    params = torch.tensor(prior, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=200)
    target = torch.tensor(prior)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z * params[0] + params[1], y)
        loss = loss + strength * ((params - target) ** 2).sum() / len(z)
        loss.backward()
        return loss

    opt.step(closure)
    return [round(float(v), 4) for v in params.detach()]


MASK_MARGINS = (None, 1.0, 2.0, 3.0, 4.0, 6.0)  # candidates for the dense mask's cut


def refinement_choice(model, samples, margins=MASK_MARGINS) -> dict:
    """The dense mask's cut (``mask_margin``) and the concepts that keep their dense mask.

    For every candidate margin, each val pair's dense and decoder-refined masks are scored;
    a concept keeps the better of the two (``no_refine`` lists those whose dense mask wins),
    and the margin with the highest mean Dice over pairs of those final masks is chosen.

    Args:
        model: a CompactSegmenter (its ``mask_margin`` and ``no_refine`` are restored after).
        samples: val planes (:class:`medsam3.training.data.Sample`).
        margins: candidate margins; None cuts at logit 0.

    Returns:
        {"mask_margin", "no_refine", "refinement_val": {concept: {"dense", "refined", "n"}},
        "mask_margin_val": {margin: mean Dice over pairs}}.
    """
    saved = model.mask_margin, model.no_refine
    model.no_refine = set()
    scores: dict = {m: defaultdict(list) for m in margins}
    for s in samples:
        state = model.encode_plane(s.load_rgb(), s.modality)
        pos = list(s.masks)
        _, dense = model.detect(state, pos)
        for k, c in enumerate(pos):
            gt = s.masks[c]()
            for margin in margins:
                model.mask_margin = margin
                plain = model.dense_mask(state, dense[k])
                refined = model.refine(state, dense[k], c)
                scores[margin][c].append((dice(plain, gt), dice(refined, gt)))
    model.mask_margin, model.no_refine = saved
    fits = {m: _refinement_table(v) for m, v in scores.items()}
    by_margin = {m: fit[2] for m, fit in fits.items()}
    best = max(margins, key=lambda m: by_margin[m])
    table, keep_dense, _ = fits[best]
    return {
        "mask_margin": best,
        "no_refine": keep_dense,
        "refinement_val": table,
        "mask_margin_val": {str(m): round(v, 4) for m, v in by_margin.items()},
    }


def _refinement_table(scores: dict) -> tuple[dict, list[str], float]:
    """Per-concept mean dense / refined Dice, the concepts whose dense mask wins, and the mean
    Dice over pairs when every concept keeps its better mask."""
    table = {
        c: {
            "dense": round(float(np.mean([a for a, _ in v])), 4),
            "refined": round(float(np.mean([b for _, b in v])), 4),
            "n": len(v),
        }
        for c, v in sorted(scores.items())
    }
    keep_dense = [c for c, r in table.items() if r["dense"] > r["refined"]]
    final = [a if c in keep_dense else b for c, v in scores.items() for a, b in v]
    return table, keep_dense, float(np.mean(final)) if final else 0.0


def finish(output: Path, head: ConceptHead, train: dict, val: dict, phrases, easy, sam) -> dict:
    """Fit the modality classifier, the calibration and no_refine; store them with the head.

    Args:
        output: the head file written by training (its best val state).
        head: the concept head in that state.
        train, val: loaded views (:func:`medsam3.training.views.load_views`, plus "samples").
        phrases: :class:`medsam3.training.phrases.PhraseTable`.
        easy: easy-negative pool.
        sam: LiteMedSAM wrapper (for the decoder refinement check).

    Returns:
        The facts written into the head JSON.
    """
    modality, modality_report = fit_modality_head(train, val)
    facts = fit_calibration(head, val, phrases, easy) | {"modality_val": modality_report}
    model = CompactSegmenter(
        head,
        sam,
        feature_cache=True,
        modality_head=modality,
        calibration=facts["presence_calibration"],
    )
    planes = list({s.item_id: s for s in val["samples"]}.values())
    facts |= refinement_choice(model, planes)
    info = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    info = {k: v for k, v in info.items() if k not in ("config", "concepts", "sha256")}
    more = {f"modality.{k}": v for k, v in modality.state_dict().items()}
    extra = {**info, **facts, "modality_classes": modality.classes, "presence_threshold": 0.5}
    save_head(head, output, extra, more)
    return facts


def main(argv: list[str] | None = None) -> None:
    """Refit a trained head's dense mask cut and no_refine on val; only its JSON changes.

    Usage: ``python -m medsam3.training.fit_heads HEAD.safetensors [--config CONFIG]`` (the
    val planes of CONFIG, encoded into the feature cache on first use).
    """
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("head")
    ap.add_argument("--config", default="configs/train_compact.yaml")
    args = ap.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(config.get("threads", 2))
    model = build_compact(args.head, feature_cache=True)
    samples, _ = split_samples(config, "val")  # the planes finish() scores; no views loaded
    planes = list({s.item_id: s for s in samples}.values())
    facts = refinement_choice(model, planes)
    print(
        f"mask_margin {facts['mask_margin']} (val Dice over pairs by margin: "
        f"{facts['mask_margin_val']}); no_refine {facts['no_refine']}"
    )
    print(f"wrote {update_head_info(Path(args.head), facts)}")


if __name__ == "__main__":
    main()
