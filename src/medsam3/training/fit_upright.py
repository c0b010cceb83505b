"""Train the upright classifier (:mod:`medsam3.models.upright`) on display-order radiology planes.

Each step takes display-order CT, MRI and X-ray planes of the training split (2D images, volume
slices in their header's display order, the Colin27 atlas), crops and re-contrasts them, stores
each in one of the eight orders and asks the net which order takes it back. The step with the
best val accuracy (every val plane in every order) is kept; the confidence needed to act is the
lowest that turns no more than ``--max-wrong-turns`` of val planes stored upright.

Sources whose slices are not stored in display order (the data README names them) are left
out: their stored orientation would teach the wrong answer.

``python -m medsam3.training.fit_upright --data ../shared/data`` writes
``src/medsam3/weights/upright.safetensors`` and its JSON; ``--exclude`` leaves datasets out
(leave-one-dataset-out folds) and ``--report`` scores given datasets in every order.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy import ndimage

from medsam3.io.atomic import atomic_path
from medsam3.models.upright import (
    DEFAULT_WEIGHTS,
    MIRROR,
    MODALITIES,
    ORDERS,
    UprightNet,
    decide,
    thumbnail,
    to_display,
    to_stored,
)
from medsam3.training.data import Sample, build_samples, colin27_samples

log = logging.getLogger("medsam3.training.fit_upright")

# stored flipped, mirrored or non-axial (shared data README), or with no conventional way up
# (intraoral radiographs of upper and lower teeth): their stored order teaches no convention
NOT_DISPLAY_ORDER = [
    "CHD68",
    "HOCMvalvesSeg",
    "IRCAD",
    "Kaggle '3D Liver",
    "NIH Pancreas",
    "Dental crown-root",
]
KEEP_SIDE = 96  # planes are kept at this longest side in memory; crops are taken from it
THRESHOLDS = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))  # 0.50 ... 0.99


def radiology_planes(root: Path, split: str, exclude: list[str], volume_slices: int = 12):
    """(planes as float32 grey arrays at KEEP_SIDE, their dataset names) of one split."""
    samples = build_samples(root, (split,), volume_slices=volume_slices)
    if split == "train":
        samples += colin27_samples(n_slices=24)
    dropped = NOT_DISPLAY_ORDER + exclude
    keep = [s for s in samples if s.modality in MODALITIES and not _named(s.dataset, dropped)]
    return [_small_grey(s) for s in keep], [s.dataset for s in keep]


def _named(dataset: str, prefixes: list[str]) -> bool:
    return any(dataset.startswith(p) for p in prefixes)


def _small_grey(sample: Sample) -> np.ndarray:
    grey = sample.load_rgb().astype(np.float32).mean(axis=-1)
    t = torch.from_numpy(grey)[None, None]
    scale = KEEP_SIDE / max(grey.shape)
    if scale < 1:
        size = (max(1, round(grey.shape[0] * scale)), max(1, round(grey.shape[1] * scale)))
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].numpy()


def augment(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (60-100 % of each side), a tilt of up to 10 degrees, gamma and noise."""
    h, w = plane.shape
    ch, cw = (max(8, int(s * rng.uniform(0.6, 1.0))) for s in (h, w))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = ndimage.rotate(
        plane[y : y + ch, x : x + cw], rng.uniform(-10, 10), reshape=False, order=1, mode="nearest"
    )
    lo, hi = float(crop.min()), float(crop.max())
    crop = (crop - lo) / (hi - lo + 1e-6)
    crop = crop ** rng.uniform(0.6, 1.6)
    return crop + rng.normal(0, rng.uniform(0, 0.05), crop.shape).astype(np.float32)


def stored_in(plane: np.ndarray, k: int) -> np.ndarray:
    """The display-order ``plane`` as an image stored so that ORDERS[k] takes it back."""
    return to_stored(plane, ORDERS[k])


def batch(planes, weights, rng: np.random.Generator, size: int):
    """(thumbnails, labels) of ``size`` augmented planes stored in random orders."""
    idx = rng.choice(len(planes), size=size, p=weights)
    ks = rng.integers(0, len(ORDERS), size=size)
    views = [stored_in(augment(planes[i], rng), k) for i, k in zip(idx, ks, strict=True)]
    x = torch.stack([thumbnail(v) for v in views])
    return x, torch.from_numpy(ks)


@torch.inference_mode()
def probabilities(net: UprightNet, planes: list[np.ndarray]) -> np.ndarray:
    """(planes, 8 stored orders, 8 classes) probabilities for every plane in every order."""
    net.eval()
    x = torch.stack([thumbnail(stored_in(p, k)) for p in planes for k in range(len(ORDERS))])
    prob = torch.cat([torch.softmax(net(c), -1) for c in x.split(512)])
    return prob.reshape(len(planes), len(ORDERS), len(ORDERS)).numpy()


def scores(prob: np.ndarray, threshold: float) -> dict:
    """How planes end when :func:`medsam3.models.upright.decide` acts at ``threshold``.

    Args:
        prob: (planes, 8 stored orders, 8 classes) from :func:`probabilities`.

    Returns:
        accuracy (argmax, every order); upright (share of plane-order pairs that end in display
        order) and up (... that end in display order or its mirror image); wrong_turns (share
        of planes stored in display order that get turned); fixed (share of turned planes put
        in display order).
    """
    n = len(ORDERS)
    truth = np.tile(np.arange(n), len(prob))
    flat = prob.reshape(-1, n)
    chosen = decide(flat, threshold)
    # the stored order k, then the chosen order's display: in display order when chosen == k
    ends = np.array([_compose(k, c) for k, c in zip(truth, chosen, strict=True)])
    return {
        "accuracy": float((flat.argmax(1) == truth).mean()),
        "upright": float((ends == 0).mean()),
        "up": float(np.isin(ends, (0, MIRROR[0])).mean()),
        "wrong_turns": float((chosen[truth == 0] != 0).mean()),
        "fixed": float((ends[truth != 0] == 0).mean()),
    }


@cache
def _compose(stored: int, chosen: int) -> int:
    """The order a plane stored in ORDERS[stored] still needs after ORDERS[chosen] is applied."""
    probe = np.arange(12.0).reshape(3, 4)
    seen = to_display(stored_in(probe, stored), ORDERS[chosen])
    shown = [to_display(seen, o) for o in ORDERS]
    return next(j for j, a in enumerate(shown) if a.shape == probe.shape and (a == probe).all())


def choose_threshold(prob: np.ndarray, max_wrong_turns: float) -> float:
    """The lowest threshold turning at most ``max_wrong_turns`` of upright planes."""
    ok = [t for t in THRESHOLDS if scores(prob, t)["wrong_turns"] <= max_wrong_turns]
    return ok[0] if ok else 1.0


def train(
    planes, datasets, val_planes, steps: int, seed: int = 0, batch_size: int = 32, smoothing=0.05
):
    """Train an UprightNet; returns (net at the best val accuracy, history)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = defaultdict(int)
    for d in datasets:
        counts[d] += 1
    weights = np.array([counts[d] ** -0.5 for d in datasets])  # balance over datasets
    net = UprightNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    best, history = (-1.0, None), []
    for step in range(1, steps + 1):
        net.train()
        x, y = batch(planes, weights / weights.sum(), rng, batch_size)
        loss = F.cross_entropy(net(x), y, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            acc = scores(probabilities(net, val_planes), 1.0)["accuracy"]
            history.append({"step": step, "loss": round(loss.item(), 4), "val_accuracy": acc})
            log.info("step %d loss %.3f val accuracy %.3f", step, loss.item(), acc)
            if acc > best[0]:
                best = (acc, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[1])
    return net.eval(), history


def per_dataset(prob: np.ndarray, datasets: list[str], threshold: float) -> dict:
    """:func:`scores` per dataset."""
    out = {}
    for d in sorted(set(datasets)):
        rows = [i for i, x in enumerate(datasets) if x == d]
        out[d] = {"planes": len(rows), **scores(prob[rows], threshold)}
    return out


def save(net: UprightNet, path: Path, info: dict) -> None:
    """Weights (safetensors) and the sibling JSON, each written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "medsam3-upright-v1"})
        tmp.chmod(0o644)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
        tmp.chmod(0o644)


def main(argv: list[str] | None = None) -> None:
    """CLI: train, choose the threshold on val, save; optionally score held-out datasets."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", type=Path)
    p.add_argument("--out", default=DEFAULT_WEIGHTS, type=Path)
    p.add_argument("--steps", default=3000, type=int)
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--max-wrong-turns", default=0.01, type=float)
    p.add_argument("--exclude", nargs="*", default=[], help="dataset name prefixes left out")
    p.add_argument("--report", nargs="*", default=[], help="dataset prefixes scored (all splits)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    planes, datasets = radiology_planes(args.data, "train", args.exclude)
    val_planes, val_datasets = radiology_planes(args.data, "val", args.exclude, volume_slices=3)
    log.info(
        "%d train planes (%d datasets), %d val planes",
        len(planes),
        len(set(datasets)),
        len(val_planes),
    )
    net, history = train(planes, datasets, val_planes, args.steps, args.seed)
    prob = probabilities(net, val_planes)
    threshold = choose_threshold(prob, args.max_wrong_turns)
    info = {
        "config": {},
        "classes": [asdict(o) for o in ORDERS],
        "min_confidence": threshold,
        "val": {str(t): scores(prob, t) for t in THRESHOLDS},
        "val_per_dataset": per_dataset(prob, val_datasets, threshold),
        "training": {
            "train_planes": len(planes),
            "val_planes": len(val_planes),
            "datasets": sorted(set(datasets)),
            "steps": args.steps,
            "seed": args.seed,
            "history": history,
            "seconds": round(time.time() - t0),
        },
        "excluded": NOT_DISPLAY_ORDER + args.exclude,
    }
    if args.report:
        held, held_ds = _report_planes(args.data, args.report)
        info["held_out"] = per_dataset(probabilities(net, held), held_ds, threshold)
    save(net, args.out, info)
    print(json.dumps({k: info[k] for k in ("min_confidence", "val")}, indent=1))
    for key in ("val_per_dataset", "held_out"):
        for d, s in info.get(key, {}).items():
            print(
                f"{key}: {d[:50]:50s} n={s['planes']:3d} acc={s['accuracy']:.3f} "
                f"upright={s['upright']:.3f} up={s['up']:.3f} wrong={s['wrong_turns']:.3f}"
            )


def _report_planes(root: Path, prefixes: list[str]):
    samples = build_samples(root, ("train", "val", "test"), volume_slices=3)
    keep = [s for s in samples if _named(s.dataset, prefixes) and s.modality in MODALITIES]
    random.Random(0).shuffle(keep)
    keep = sorted(keep, key=lambda s: s.dataset)
    return [_small_grey(s) for s in keep], [s.dataset for s in keep]


if __name__ == "__main__":
    main()
