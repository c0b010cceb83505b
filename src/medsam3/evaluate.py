"""Evaluate the compact backend on the shared data's test split (or val, for selection).

Metrics: Dice per present (item, concept) pair and per concept; presence MCC over positives
(annotated pairs) and negatives (item x concepts of other modalities and body parts); the ratio
Dice(text prompt) / Dice(LiteMedSAM prompted with the ground-truth component boxes); CVC video
per-frame Dice; volume Dice. Usage::

    python -m medsam3.evaluate --data /work/shared/data --out results/eval_compact
    python -m medsam3.evaluate --split val --out results/eval_val   # choose variants on val
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from medsam3.io.image import MedImage
from medsam3.io.read import read_source
from medsam3.models.orientation import segment_in_display_order
from medsam3.train import _safe_negatives, load_config_caps, matthews
from medsam3.training_data import build_samples, group_by_item, read_manifest

TEST_CAPS = {"HC18": 12, "WBC dataset 1 (Jiangxi Tecom)": 10, "WBC dataset 2 (CellaVision)": 6}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    den = pred.sum() + gt.sum()
    return 1.0 if den == 0 else float(2 * np.logical_and(pred, gt).sum() / den)


def gt_box_mask(model, state, gt: np.ndarray) -> np.ndarray:
    """LiteMedSAM prompted with the box of every GT connected component, unioned.

    Args:
        model: CompactSegmenter.
        state: encoded plane.
        gt: (y, x) bool ground truth.

    Returns:
        (y, x) bool mask.
    """
    labels, n = ndimage.label(gt)
    if n == 0:
        return np.zeros_like(gt)
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
    return model.decoder_union(state, np.array(boxes, np.float32))


def eval_images(
    model, root: Path, caps: dict, n_neg: int = 2, seed: int = 0, split: str = "test"
) -> dict:
    """Dice, GT-box Dice and presence labels over a split's 2D images.

    Returns:
        {"pairs": [{item, concept, dataset, dice, box_dice, presence}], "presence": [(y, p)]}.
    """
    samples = [s for s in build_samples(root, (split,), caps) if "@z" not in s.item_id]
    safe = _safe_negatives(root)
    rng = random.Random(seed)
    pairs, pres = [], []
    for s in tqdm(samples, desc=f"{split} images", mininterval=10):
        pos = list(s.masks)
        pool = [c for c, (m, b) in safe.items() if s.modality not in m and s.body_part not in b]
        negs = rng.sample(pool, min(n_neg, len(pool)))
        rgb = s.load_rgb()
        res = model.segment(rgb, pos + negs, kind="image")
        state = model.encode_plane(rgb)
        for c in pos:
            gt = s.masks[c]()
            pairs.append(
                {
                    "item": s.item_id,
                    "concept": c,
                    "dataset": s.dataset,
                    "dice": dice(res[c].mask, gt),
                    "box_dice": dice(gt_box_mask(model, state, gt), gt),
                    "presence": res[c].presence,
                }
            )
            pres.append((1, res[c].presence))
        pres += [(0, res[c].presence) for c in negs]
    return {"pairs": pairs, "presence": pres}


def eval_video(model, root: Path, split: str = "test") -> dict:
    """Per-frame Dice on a split's videos (the CVC-ClinicDB polyp sequence is in test)."""
    rows = [r for r in read_manifest(root) if r["kind"] == "video" and r["split"] == split]
    out = {}
    for r in rows:
        frames = sorted((root / r["image"]).glob("*.png"))
        video = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
        gts = [np.asarray(Image.open(root / r["mask"] / f.name)) > 127 for f in frames]
        res = model.segment(video, [r["concept"]], modality=r["modality"], kind="video")
        mask = res[r["concept"]].mask
        per = [dice(mask[i], g[..., 0] if g.ndim == 3 else g) for i, g in enumerate(gts)]
        out[f"{r['item_id']}/{r['concept']}"] = {"per_frame": per, "mean": float(np.mean(per))}
    return out


def eval_volumes(model, root: Path, max_concepts: int = 12, split: str = "test") -> dict:
    """3D Dice of each of a split's volumes' concepts (at most max_concepts per volume)."""
    rows = [r for r in read_manifest(root) if r["kind"] == "volume" and r["split"] == split]
    out = {}
    for item, rs in tqdm(group_by_item(rows).items(), desc=f"{split} volumes"):
        rs = rs[:max_concepts]
        image = read_source(root / rs[0]["image"], modality=rs[0]["modality"])
        res = segment_in_display_order(model, image, [r["concept"] for r in rs])
        for r in rs:  # masks come back in stored order, as the ground truth is read
            gt = sitk.GetArrayFromImage(sitk.ReadImage(str(root / r["mask"])))
            gt = gt == float(r["label_value"])
            out[f"{item}/{r['concept']}"] = dice(res[r["concept"]].mask, gt)
    return out


def eval_mni152(model) -> dict:
    """3D Dice of "brain" on nilearn's MNI152 T1 (2 mm) against its brain mask.

    A held-out check for the Colin27 atlas training slices (another brain, another template).
    """
    from nilearn import datasets

    template = nibabel_volume(datasets.load_mni152_template(resolution=2), "mri")
    gt = nibabel_volume(datasets.load_mni152_brain_mask(resolution=2), "mri").array > 0.5
    res = segment_in_display_order(model, template, ["brain"])
    return {"mni152_nilearn/brain": dice(res["brain"].mask, gt)}


def nibabel_volume(img, modality: str) -> MedImage:
    """A nibabel image as a MedImage: (z, y, x) array as SimpleITK reads it, RAS affine turned
    into LPS geometry."""
    affine = np.asarray(img.affine, float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ affine[:3, :3] / spacing
    return MedImage(
        array=np.asarray(img.get_fdata(), np.float32).transpose(2, 1, 0),
        kind="volume",
        spacing=tuple(spacing.tolist()),
        origin=tuple((ras_to_lps @ affine[:3, 3]).tolist()),
        direction=tuple(direction.ravel().tolist()),
        modality=modality,
    )


def calibrate(model, root: Path, caps: dict, seed: int = 0) -> dict:
    """On the val split: dense vs decoder-refined Dice per concept, and the presence threshold.

    Returns:
        {"refinement": concept -> {"dense", "refined", "n"}, "presence_threshold": the threshold
        in [0.05, 0.95] maximising presence MCC over positives and safe negatives, "mcc": it}.
    """
    from medsam3.models.litemedsam import logits_to_original

    saved, model.no_refine = model.no_refine, set()
    safe, rng = _safe_negatives(root), random.Random(seed)
    scores: dict[str, list] = defaultdict(list)
    labels, probs = [], []
    for s in tqdm(build_samples(root, ("val",), caps), desc="val images", mininterval=10):
        state = model.encode_plane(s.load_rgb())
        pos = list(s.masks)
        pool = [c for c, (m, b) in safe.items() if s.modality not in m and s.body_part not in b]
        negs = rng.sample(pool, min(2, len(pool)))
        presence, dense = model.detect(state, pos + negs)
        labels += [1] * len(pos) + [0] * len(negs)
        probs += [float(v) for v in presence]
        for k, c in enumerate(pos):
            gt = s.masks[c]()
            plain = (logits_to_original(dense[k][None], state.prep)[0, 0] > 0).numpy()
            scores[c].append((dice(plain, gt), dice(model.refine(state, dense[k], c), gt)))
    model.no_refine = saved
    y, p = np.array(labels), np.array(probs)
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    mccs = [matthews(y, p >= t) for t in grid]
    refinement = {
        c: {
            "dense": float(np.mean([a for a, _ in v])),
            "refined": float(np.mean([b for _, b in v])),
            "n": len(v),
        }
        for c, v in sorted(scores.items())
    }
    threshold = plateau_centre(grid, np.array(mccs))
    best = int(np.flatnonzero(grid == threshold)[0])
    return {"refinement": refinement, "presence_threshold": threshold, "mcc": mccs[best]}


def plateau_centre(grid: np.ndarray, scores: np.ndarray, tol: float = 0.005) -> float:
    """The middle of the thresholds scoring within ``tol`` of the best (robust to ties).

    Well separated val scores give a flat MCC plateau; its first point would sit right next
    to the negatives, its middle leaves a margin on both sides.
    """
    good = grid[scores >= scores.max() - tol]
    return float(good[len(good) // 2])


def summarise(images: dict, video: dict, volumes: dict) -> dict:
    """Aggregate metrics (means over pairs and concepts, MCC, ratios)."""
    pairs = images["pairs"]
    per_concept: dict[str, list] = defaultdict(list)
    for p in pairs:
        per_concept[p["concept"]].append(p)
    concept_rows = {
        c: {
            "n": len(ps),
            "dice": float(np.mean([p["dice"] for p in ps])),
            "box_dice": float(np.mean([p["box_dice"] for p in ps])),
        }
        for c, ps in sorted(per_concept.items())
    }
    y = np.array([a for a, _ in images["presence"]])
    p = np.array([b for _, b in images["presence"]])
    mean_dice = float(np.mean([q["dice"] for q in pairs]))
    mean_box = float(np.mean([q["box_dice"] for q in pairs]))
    return {
        "n_pairs": len(pairs),
        "mean_dice_pairs": mean_dice,
        "mean_dice_concepts": float(np.mean([r["dice"] for r in concept_rows.values()])),
        "mean_gt_box_dice": mean_box,
        "text_to_box_ratio": mean_dice / max(mean_box, 1e-9),
        "presence_mcc": matthews(y, p >= 0.5),
        "presence_n_pos": int(y.sum()),
        "presence_n_neg": int((1 - y).sum()),
        "per_concept": concept_rows,
        "video": {k: v["mean"] for k, v in video.items()},
        "volumes": volumes,
    }


def markdown(summary: dict) -> str:
    """Markdown table of a summary."""
    lines = [
        f"- pairs: {summary['n_pairs']}; mean Dice over pairs "
        f"**{summary['mean_dice_pairs']:.3f}**, over concepts {summary['mean_dice_concepts']:.3f}",
        f"- LiteMedSAM with GT boxes: {summary['mean_gt_box_dice']:.3f}; "
        f"text/GT-box ratio **{summary['text_to_box_ratio']:.3f}**",
        f"- presence MCC **{summary['presence_mcc']:.3f}** "
        f"({summary['presence_n_pos']} positives, {summary['presence_n_neg']} negatives)",
        "",
        "| concept | n | Dice (text) | Dice (GT box) |",
        "|---|---|---|---|",
    ]
    for c, r in summary["per_concept"].items():
        lines.append(f"| {c} | {r['n']} | {r['dice']:.3f} | {r['box_dice']:.3f} |")
    lines += ["", "| video / volume concept | Dice |", "|---|---|"]
    for k, v in {**summary["video"], **summary["volumes"]}.items():
        lines.append(f"| {k} | {v:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate on a split (default test), print a table, write summary.json and .md.

    Args:
        argv: command-line arguments (see --help).
    """
    import torch

    from medsam3.models.compact import build_compact

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default="results/eval_compact")
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="val to choose between variants; test (default) to report the chosen one",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["images", "video", "volumes"])
    ap.add_argument("--max-volume-concepts", type=int, default=12)
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="on val: write the presence threshold and the concepts whose dense mask beats "
        "decoder refinement (no_refine) to the head JSON, then exit",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(args.data)
    model = build_compact(args.checkpoint, feature_cache=True)
    if args.calibrate:
        _write_refinement(model, root, args.checkpoint)
        return
    split = args.split
    caps = TEST_CAPS if split == "test" else load_config_caps(split)
    images = eval_images(model, root, caps, split=split) if "images" not in args.skip else None
    video = eval_video(model, root, split) if "video" not in args.skip else {}
    volumes = {}
    if "volumes" not in args.skip:
        volumes = eval_volumes(model, root, args.max_volume_concepts, split)
        if split == "test":  # the MNI152 template is a held-out check, reported with test
            volumes |= eval_mni152(model)
    summary = summarise(images or {"pairs": [], "presence": []}, video, volumes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"summary": summary, "images": images}, indent=1), encoding="utf-8"
    )
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))


def _write_refinement(model, root: Path, checkpoint: str | None) -> None:
    from medsam3.models.compact import default_checkpoint

    cal = calibrate(model, root, load_config_caps("val"))
    info_path = Path(checkpoint or default_checkpoint()).with_suffix(".json")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    table = cal["refinement"]
    info["calibration_val"] = cal
    info["no_refine"] = [c for c, r in table.items() if r["dense"] > r["refined"]]
    info["presence_threshold"] = cal["presence_threshold"]
    info_path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    print(json.dumps(cal, indent=1))
    print("no_refine:", info["no_refine"])


if __name__ == "__main__":
    main()
