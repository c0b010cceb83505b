"""The upright step against segmenting as stored, on radiology images stored in every order.

Each CT, MRI and X-ray image of a split (2D images, not volume slices: a volume's order comes
from its header) is stored in each of the eight orders (:data:`medsam3.models.upright.ORDERS`),
its masks with it, and segmented by the compact backend twice: as stored (the baseline, upright
off) and with the upright step. The same phrase is asked in both (a user with a mirrored slice
still wants the patient's left kidney). Reported per stored order and over all: mean Dice over
annotated pairs, the paired difference with a bootstrap 95% interval, how often the image was
turned, and seconds per image of each arm (no modality given: it is recognised, as in
``medsam3 evaluate``).

Choose on val; read test once per shipped classifier. The model card's run (about 10 min on
2 cores per split):

    PYTHONPATH=src python benchmarks/upright.py --data ../shared/data --per-dataset 2 \
        --orders 0 2 3 4 5 [--split test]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pick_images(root: Path, split: str, per_dataset: int, seed: int = 0) -> list:
    """Up to ``per_dataset`` radiology 2D images per source dataset, seeded."""
    from medsam3.models.upright import MODALITIES
    from medsam3.training.data import build_samples

    by = defaultdict(list)
    for s in build_samples(root, (split,)):
        if s.modality in MODALITIES and "@z" not in s.item_id:
            by[s.dataset].append(s)
    rng = random.Random(seed)
    return [s for d in sorted(by) for s in rng.sample(by[d], min(per_dataset, len(by[d])))]


def run(model, upright, samples: list, orders: list[int]) -> list[dict]:
    """One row per (image, stored order, concept) with both arms' Dice."""
    from medsam3.models.upright import ORDERS, to_stored
    from medsam3.training.scores import dice

    rows = []
    for i, s in enumerate(samples):
        rgb, truth = s.load_rgb(), {c: m() for c, m in s.masks.items()}
        for k in orders:
            image = to_stored(rgb, ORDERS[k])
            arms = {}
            for arm, classifier in (("off", None), ("on", upright)):
                model.upright = classifier
                t0 = time.perf_counter()
                result = model.segment(image, list(truth), kind="image")
                arms[arm] = (result, time.perf_counter() - t0)
            for c, gt in truth.items():
                on = arms["on"][0][c]
                rows.append(
                    {
                        "dataset": s.dataset,
                        "item": s.item_id,
                        "concept": c,
                        "order": k,
                        "dice_off": dice(arms["off"][0][c].mask, to_stored(gt, ORDERS[k])),
                        "dice_on": dice(on.mask, to_stored(gt, ORDERS[k])),
                        "turned": bool(on.extra.get("upright", {}).get("applied", False)),
                        "s_off": arms["off"][1],
                        "s_on": arms["on"][1],
                    }
                )
        print(f"{i + 1}/{len(samples)} {s.dataset[:50]}", flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per order and overall: Dice off / on, paired difference and interval, turned share."""
    from medsam3.training.scores import bootstrap_ci

    def block(rs: list[dict]) -> dict:
        off = np.array([r["dice_off"] for r in rs])
        on = np.array([r["dice_on"] for r in rs])
        lo, hi = bootstrap_ci(on - off)
        return {
            "pairs": len(rs),
            "dice_off": round(off.mean(), 4),
            "dice_on": round(on.mean(), 4),
            "delta": round((on - off).mean(), 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "turned": round(np.mean([r["turned"] for r in rs]), 3),
        }

    out = {
        "per_order": {
            k: block([r for r in rows if r["order"] == k])
            for k in sorted({r["order"] for r in rows})
        }
    }
    out["stored_in_display_order"] = out["per_order"].get(0)
    out["turned_orders"] = block([r for r in rows if r["order"] != 0])
    out["all_orders"] = block(rows)
    stored = [r for r in rows if r["order"] == 0]
    out["stored_per_dataset"] = {
        d: block([r for r in stored if r["dataset"] == d])
        for d in sorted({r["dataset"] for r in stored})
    }
    per_image = {(r["item"], r["order"]): (r["s_off"], r["s_on"]) for r in rows}
    s_off, s_on = np.array(list(per_image.values())).mean(0)
    out["seconds_per_image"] = {
        "off": round(s_off, 3),
        "on": round(s_on, 3),
        "ratio": round(s_on / s_off, 3),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    import torch

    from medsam3.models.compact import build_compact
    from medsam3.models.upright import load_upright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", type=Path)
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-dataset", type=int, default=3)
    ap.add_argument("--orders", type=int, nargs="*", default=list(range(8)))
    ap.add_argument("--upright", default=None, help="classifier weights (default: packaged)")
    ap.add_argument("--checkpoint", default=None, help="concept head (default: packaged)")
    ap.add_argument("--out", default=None, type=Path, help="rows and summary as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = build_compact(args.checkpoint, upright=False)
    upright = load_upright(args.upright)
    samples = pick_images(args.data, args.split, args.per_dataset)
    print(f"{len(samples)} images, orders {args.orders}", flush=True)
    rows = run(model, upright, samples, args.orders)
    summary = summarise(rows)
    print(json.dumps({k: v for k, v in summary.items() if k != "stored_per_dataset"}, indent=1))
    for d, b in summary["stored_per_dataset"].items():
        print(
            f"stored  {d[:50]:50s} {b['pairs']:3d} {b['dice_off']:.3f} -> {b['dice_on']:.3f}"
            f" turned {b['turned']:.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
