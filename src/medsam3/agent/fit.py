"""Score the agent on a split of the shared data; fit the critic and the replacement rule.

One agent run gives both arms on the same encodings: the backend's own result ("off": the
critic's input, kept as ``agent_raw_mask`` when the agent changed it) and the agent's
("rules"). Pairs are every annotated (image, concept) plus up to ``hard`` concepts annotated
elsewhere in the same dataset (negatives, where an empty mask is right). The critic is fitted
to predict "right": Dice >= 0.5 on an annotated pair, an empty mask on a negative. For the
replacement rule (:mod:`medsam3.agent.gain`) every action of the planner's first round is run
on each non-empty result, and each candidate's true Dice recorded.

``python -m medsam3.agent.fit --data ../shared/data --split val --per-dataset 4`` refits both
into ``medsam3/data/agent_priors.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np

from medsam3.agent.critic import FEATURES, critic_score, features, fit_coefficients, iou
from medsam3.agent.gain import action_summary, fit_gain
from medsam3.agent.planner import Candidate, evidence, plane_actions
from medsam3.agent.priors import PRIORS_FILE, Priors, load_priors, write_priors
from medsam3.agent.segmenter import AgentSegmenter, wrap
from medsam3.models.build import load_model
from medsam3.models.compact import shared_encodings
from medsam3.training.data import Sample, build_samples, read_manifest
from medsam3.training.scores import dice


def val_samples(root: Path, split: str, per_dataset: int, limit: int | None) -> list[Sample]:
    """2D images of a split (no volume slices), at most ``per_dataset`` per dataset, seeded."""
    samples = build_samples(root, (split,), {"default": per_dataset}, volume_slices=0)
    samples = [s for s in samples if "@z" not in s.item_id]
    return samples[:limit] if limit else samples


def dataset_concepts(root: Path) -> dict[str, list[str]]:
    """dataset -> its annotated concepts, sorted."""
    out: dict[str, set[str]] = {}
    for r in read_manifest(root):
        out.setdefault(r["source_dataset"], set()).add(r["concept"])
    return {k: sorted(v) for k, v in out.items()}


def score_sample(model: AgentSegmenter, sample: Sample, negatives: list[str]) -> list[dict]:
    """Rows for one image: per concept both arms' Dice, presence, critic and agent fields.

    Args:
        model: the agent-wrapped compact segmenter.
        sample: the image with its masks.
        negatives: concepts not annotated on it.

    Returns:
        One row per concept (``seconds``: the image's wall time, on its first row only).
    """
    rgb = sample.load_rgb()
    concepts = list(sample.masks) + negatives
    start = time.perf_counter()
    results = model.segment(rgb, concepts, kind="image")
    seconds = time.perf_counter() - start
    rows = []
    for c in concepts:
        r = results[c]
        gt = sample.masks[c]() if c in sample.masks else np.zeros(r.mask.shape, bool)
        raw = r.extra.get("agent_raw_mask", r.mask).astype(bool)
        rows.append(
            {
                "item": sample.item_id,
                "dataset": sample.dataset,
                "modality": sample.modality,
                "concept": c,
                "annotated": c in sample.masks,
                "dice_off": dice(raw, gt),
                "dice_rules": dice(r.mask.astype(bool), gt),
                "present_off": bool(raw.any()),
                "present_rules": bool(r.mask.any()),
                "critic_off": r.extra["critic_raw"],
                "critic_rules": r.extra["critic_score"],
                "rounds": r.extra["agent_rounds"],
                "review": r.extra["review"],
                "action": r.extra["agent_action"],
                "encodings": r.extra["agent_encodings"],
                "seconds": seconds if not rows else 0.0,
                "agent_seconds": r.extra.get("agent_seconds", 0.0),
                **{f"f_{k}": v for k, v in r.extra["critic_raw_features"].items()},
            }
        )
    return rows


def score_split(
    model: AgentSegmenter, samples: list[Sample], root: Path, hard: int, scorer=None
) -> list[dict]:
    """``scorer`` (default :func:`score_sample`; :func:`candidate_rows` for the fit) over
    samples, with ``hard`` negatives from each image's dataset; progress on stderr."""
    scorer = scorer or score_sample
    named = dataset_concepts(root)
    rows = []
    for n, s in enumerate(samples, 1):
        negatives = [c for c in named.get(s.dataset, []) if c not in s.masks][:hard]
        rows += scorer(model, s, negatives)
        if n % 20 == 0 or n == len(samples):
            print(f"{n}/{len(samples)} images scored", file=sys.stderr, flush=True)
    return rows


def candidate_rows(model: AgentSegmenter, sample: Sample, negatives: list[str]) -> list[dict]:
    """Per concept of one image: the backend's result and every first-round candidate of the
    planner (all actions, whatever the critic's features call for), with their true Dice.

    Returns:
        One row per concept: ``dice_off``, ``present_off``, ``annotated``, the critic's
        features (``f_<name>``) and ``candidates`` [{action, dice, features, overlap (IoU with
        the backend's mask)}].
    """
    base, rgb = model.base, sample.load_rgb()
    concepts = list(sample.masks) + negatives
    rows = []
    with shared_encodings(base):
        results = base.segment(rgb, concepts, kind="image")
        masks = {p: r.mask.astype(bool) for p, r in results.items()}
        for c in concepts:
            r = results[c]
            gt = sample.masks[c]() if c in sample.masks else np.zeros(r.mask.shape, bool)
            others = {p: m for p, m in masks.items() if p != c}
            ctx = model._plane_context(c, r, rgb, others, None)
            now = Candidate(masks[c], float(r.presence), evidence=evidence(ctx, masks[c]))
            now.features = features(c, now.mask, now.presence, others, now.evidence, model.priors)
            acts = plane_actions(ctx, now, 1, every=True) if now.mask.any() else []
            rows.append(
                {
                    "item": sample.item_id,
                    "dataset": sample.dataset,
                    "concept": c,
                    "annotated": c in sample.masks,
                    "dice_off": dice(now.mask, gt),
                    "present_off": bool(now.mask.any()),
                    **{f"f_{k}": v for k, v in now.features.items()},
                    "candidates": [_candidate(a.run(), c, others, gt, now, model) for a in acts],
                }
            )
    for row in rows:
        row["candidates"] = [c for c in row["candidates"] if c is not None]
    return rows


def _candidate(cand: Candidate | None, concept, others, gt, now: Candidate, model) -> dict | None:
    if cand is None:
        return None
    values = features(concept, cand.mask, cand.presence, others, cand.evidence, model.priors)
    return {
        "action": cand.action,
        "dice": dice(cand.mask, gt),
        "features": values,
        "overlap": iou(cand.mask, now.mask),
    }


def fit_replacement(rows: list[dict], critic: Priors) -> tuple[Priors, dict]:
    """The critic's priors with the replacement rule fitted on :func:`candidate_rows` rows
    (each result and candidate scored by that critic first)."""

    def scored(values: dict) -> dict:
        return {**values, "critic": critic_score(values, critic)}

    gain_rows = [
        {
            "dataset": r["dataset"],
            "annotated": r["annotated"],
            "dice": r["dice_off"],
            "current": scored({f: r[f"f_{f}"] for f in FEATURES}),
            "candidates": [{**c, "features": scored(c["features"])} for c in r["candidates"]],
        }
        for r in rows
    ]
    model, cv = fit_gain(gain_rows, FEATURES, critic.fitted_on)
    summary = {k: round(v, 4) for k, v in action_summary(gain_rows).items()}
    print(f"first-round candidates, mean Dice: {summary}", flush=True)
    return replace(critic, gain=model), cv


def is_right(row: dict) -> int:
    """1 when the backend's own result is right: Dice >= 0.5, or empty on a negative."""
    return int(row["dice_off"] >= 0.5 if row["annotated"] else not row["present_off"])


def fit_critic(rows: list[dict], source: str) -> Priors:
    """The shipped priors with critic coefficients fitted on rows of :func:`candidate_rows`
    (or :func:`score_split`)."""
    data = [{**{f: r[f"f_{f}"] for f in FEATURES}, "label": is_right(r)} for r in rows]
    coef, bias = fit_coefficients(data)
    old = load_priors()
    return Priors(old.concepts, FEATURES, tuple(coef), bias, source)


def main(argv: list[str] | None = None) -> None:
    """``python -m medsam3.agent.fit --data DIR [--split val] [--per-dataset 4]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-dataset", type=int, default=4)
    parser.add_argument("--hard", type=int, default=1, help="negatives per image")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="compact head (default: shipped)")
    parser.add_argument("--rows", type=Path, default=None, help="save the scored rows (JSON)")
    parser.add_argument("--from-rows", type=Path, default=None, help="refit from saved rows")
    default_out = Path(str(resources.files("medsam3").joinpath(PRIORS_FILE)))
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    if args.from_rows:
        saved = json.loads(args.from_rows.read_text(encoding="utf-8"))
        rows, source = saved["rows"], saved["source"]
    else:
        rows, source = _score(args)
    if args.rows:
        args.rows.write_text(json.dumps({"rows": rows, "source": source}), encoding="utf-8")
    priors, cv = fit_replacement(rows, fit_critic(rows, source))
    print(f"critic {priors.coef}; replacement rule, cross-validated gain by margin {cv}")
    print(f"wrote {write_priors(priors, args.out)}: {priors.gain.fitted_on}")


def _score(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Score the split with the agent's critic inputs; rows and a sentence naming them."""
    base = load_model("compact", checkpoint=args.checkpoint, device="cpu")
    model = wrap(base, {"mode": "rules", "max_rounds": 0})
    samples = val_samples(args.data, args.split, args.per_dataset, args.limit)
    rows = score_split(model, samples, args.data, args.hard, candidate_rows)
    source = (
        f"{args.split} split, {len(samples)} images ({args.per_dataset} per dataset, seed 0), "
        f"{len(rows)} pairs with {args.hard} hard negative(s) per image; compact head sha256 "
        f"{base.checkpoint_digest[:12]}"
    )
    return rows, source


if __name__ == "__main__":
    main()
