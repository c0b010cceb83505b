"""Evaluate the compact backend on the shared data: a split, or whole held-out datasets.

Per 2D image: Dice of every annotated concept, the Dice of LiteMedSAM prompted with the ground
truth's component boxes (the ceiling of box-driven masks), presence of the positives and of
negatives (same-dataset concepts absent from the image, and two concepts of other modalities and
body parts), the recognised modality (the model is not told it), and, for concepts with listed
synonyms, the Dice between the synonym's mask and the concept's. Then per-frame Dice of the
videos and 3D Dice of the volumes. Tables by concept, modality and dataset (:mod:`scores`).
Usage::

    python -m medsam3.training.evaluate --split val --out results/eval_val   # choose on val
    python -m medsam3.training.evaluate --out results/eval_test              # once per model
    python -m medsam3.training.evaluate --split all --datasets "Kvasir-SEG" --checkpoint H \
        --out results/lodo_kvasir     # a dataset the head at H was trained without
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from medsam3.io.image import MedImage
from medsam3.io.read import read_source
from medsam3.models.compact import build_compact
from medsam3.models.concepts import get_concept
from medsam3.models.orientation import segment_in_display_order
from medsam3.training.data import (
    build_samples,
    easy_negatives,
    group_by_item,
    read_manifest,
    safe_negatives,
)
from medsam3.training.scores import dice, markdown, summarise_images

TEST_CAPS = {"HC18": 12, "WBC dataset 1 (Jiangxi Tecom)": 10, "WBC dataset 2 (CellaVision)": 6}
VAL_CAPS = {
    "HC18": 14,
    "WBC dataset 1 (Jiangxi Tecom)": 10,
    "WBC dataset 2 (CellaVision)": 6,
    "PH2": 10,
}
ALL_CAP = 40  # items per held-out dataset when a whole dataset is evaluated


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
    model,
    root: Path,
    splits: tuple[str, ...],
    caps: dict,
    datasets=None,
    seed: int = 0,
    synonyms: bool = True,
) -> dict:
    """Score every 2D image of the splits (of ``datasets`` only, when given).

    Returns:
        {"pairs": [{item, concept, dataset, modality, dice, box_dice, presence}],
        "presence": [{label, presence, kind, modality, concept, dataset}],
        "modality": [{item, modality, predicted, confidence}], "synonyms": [{concept,
        synonym, dice}]}.
    """
    samples = [s for s in build_samples(root, splits, caps) if "@z" not in s.item_id]
    if datasets:
        samples = [s for s in samples if s.dataset in datasets]
    named = _concepts_by_dataset(root)
    easy, rng = safe_negatives(root), random.Random(seed)
    out = {"pairs": [], "presence": [], "modality": [], "synonyms": []}
    for s in tqdm(samples, desc="images", mininterval=10):
        hard = sorted(named[s.dataset] - set(s.masks))
        _score_image(model, s, hard, easy, rng, out, synonyms)
    return out


def _score_image(model, sample, hard: list[str], easy, rng, out: dict, synonyms=True) -> None:
    pos = list(sample.masks)
    easy_names = easy_negatives((sample.modality, sample.body_part), easy, rng, 2)
    negs = hard + [c for c in easy_names if c not in hard]  # a mixed dataset names both
    rgb = sample.load_rgb()
    res = model.segment(rgb, pos + negs, kind="image")
    state = model.encode_plane(rgb)
    if model.modality_head is not None:  # heads before v2 have no modality classifier
        guess = model.recognise_modality(rgb)
        out["modality"].append(
            {
                "item": sample.item_id,
                "modality": sample.modality,
                "predicted": guess.modality,
                "confidence": guess.confidence,
            }
        )
    where = {"modality": sample.modality, "dataset": sample.dataset}
    for c in pos:
        gt = sample.masks[c]()
        out["pairs"].append(
            {
                "item": sample.item_id,
                "concept": c,
                **where,
                "dice": dice(res[c].mask, gt),
                "box_dice": dice(gt_box_mask(model, state, gt), gt),
                "presence": res[c].presence,
            }
        )
        if synonyms:  # one more segmentation per listed synonym and spelling variant
            out["synonyms"] += _synonym_agreement(model, rgb, c, res[c].mask)
    for c in pos + negs:
        kind = "pos" if c in sample.masks else "hard" if c in hard else "easy"
        out["presence"].append(
            {
                "label": int(kind == "pos"),
                "presence": res[c].presence,
                "kind": kind,
                "concept": c,
                **where,
            }
        )


def _synonym_agreement(model, rgb: np.ndarray, concept: str, mask: np.ndarray) -> list[dict]:
    entry = get_concept(concept)
    if entry is None or not entry.synonyms:
        return []
    synonym = entry.synonyms[0]
    other = model.segment(rgb, [synonym], kind="image")[synonym].mask
    return [{"concept": concept, "synonym": synonym, "dice": dice(other, mask)}]


def _concepts_by_dataset(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in read_manifest(root):
        out.setdefault(r["source_dataset"], set()).add(r["concept"])
    return out


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


def summarise(images: dict | None, video: dict, volumes: dict, threshold: float = 0.5) -> dict:
    """Image tables (presence MCC at the model's ``threshold``) plus video and volume Dice."""
    summary = summarise_images(images, threshold) if images else {"n_pairs": 0}
    return {**summary, "video": {k: v["mean"] for k, v in video.items()}, "volumes": volumes}


SPLITS = {
    "test": ("test",),
    "val": ("val",),
    "train": ("train",),  # how well the head fits what it learnt from (under- vs overfitting)
    "all": ("train", "val", "test"),
}


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate, print the tables, write summary.json and summary.md under --out.

    Args:
        argv: command-line arguments (see --help).
    """
    import torch

    ap = argparse.ArgumentParser(prog="medsam3 evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="shared data folder")
    ap.add_argument("--checkpoint", default=None, help="concept head (default: the shipped one)")
    ap.add_argument("--out", default="results/eval_compact", help="folder for the summary")
    ap.add_argument(
        "--split",
        default="test",
        choices=sorted(SPLITS),
        help="val to choose between variants; test (default) once per shipped "
        "model; train to tell under- from overfitting; all = every item of --datasets "
        "(leave-one-dataset-out)",
    )
    ap.add_argument(
        "--datasets",
        nargs="*",
        default=None,
        help="only these source datasets (manifest source_dataset)",
    )
    ap.add_argument(
        "--max-items", type=int, default=ALL_CAP, help="items per dataset with --split all or train"
    )
    ap.add_argument(
        "--no-synonyms", action="store_true", help="skip the synonym agreement (faster)"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["images", "video", "volumes"])
    ap.add_argument("--max-volume-concepts", type=int, default=12)
    ap.add_argument(
        "--presence-threshold",
        type=float,
        default=None,
        help="instead of the head's own; 0 segments every pair whatever its presence, so any "
        "threshold can be scored afterwards (medsam3.training.presence_threshold)",
    )
    ap.add_argument(
        "--upright",
        default="on",
        help="on: the packaged upright classifier (medsam3.models.upright); off: images as "
        "stored; or a classifier's .safetensors path",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(args.data)
    options = {}
    if args.presence_threshold is not None:  # else the head's own
        options["presence_threshold"] = args.presence_threshold
    upright = {"on": True, "off": False}.get(args.upright, args.upright)
    model = build_compact(args.checkpoint, feature_cache=True, upright=upright, **options)
    per_dataset = {"default": args.max_items}
    caps = {"test": TEST_CAPS, "val": VAL_CAPS}.get(args.split, per_dataset)
    splits = SPLITS[args.split]
    images = None
    if "images" not in args.skip:
        images = eval_images(
            model, root, splits, caps, args.datasets, synonyms=not args.no_synonyms
        )
    held_out = args.split == "all"  # video and volumes belong to the split evaluations
    video = {} if "video" in args.skip or held_out else eval_video(model, root, args.split)
    volumes = {}
    if "volumes" not in args.skip and not held_out:
        volumes = eval_volumes(model, root, args.max_volume_concepts, args.split)
        if args.split == "test":  # the MNI152 template is a held-out check, reported with test
            volumes |= eval_mni152(model)
    summary = summarise(images, video, volumes, model.presence_threshold)
    summary["arguments"] = vars(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"summary": summary, "images": images}, indent=1), encoding="utf-8"
    )
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))


if __name__ == "__main__":
    main()
