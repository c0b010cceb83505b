"""Samples from the shared data manifest (2D images and a few volume slices) and a feature cache.

A sample is one 2D plane with its annotated concepts. Each plane is converted to uint8 RGB
exactly as the compact segmenter does at inference, then encoded once by LiteMedSAM; the
(256, 64, 64) embedding is cached as float16 under ``$MEDSAM3_CACHE/features`` keyed by the
sha256 of the RGB plane, together with the padded 256x256 input frame (uint8).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsam3.models.concepts import load_vocabulary
from medsam3.models.litemedsam import IMAGE_SIZE
from medsam3.models.orientation import display_order
from medsam3.models.preprocess import to_uint8_rgb, volume_intensity_range


@dataclass
class Sample:
    """One 2D plane and its annotated concepts.

    Attributes:
        item_id: manifest item id (plus ``@z<index>`` for volume slices).
        split: train / val / test.
        dataset: source dataset name.
        modality: manifest modality.
        body_part: manifest body part.
        load_rgb: returns the (y, x, 3) uint8 plane.
        masks: concept -> callable returning the (y, x) bool mask.
    """

    item_id: str
    split: str
    dataset: str
    modality: str
    body_part: str
    load_rgb: Callable[[], np.ndarray]
    masks: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)


def read_manifest(root: Path) -> list[dict]:
    """Rows of ``root/manifest.csv`` as dicts."""
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plane_rgb(plane: np.ndarray, modality: str, intensity_range=None, concept=None) -> np.ndarray:
    """The compact model's intensity mapping: uint8 data pass through; else modality-aware.

    Args:
        plane: (y, x) or (y, x, c) plane.
        modality: manifest / user modality.
        intensity_range: volume-wide (lo, hi) for non-CT float volumes.
        concept: phrase for the CT window.

    Returns:
        (y, x, 3) uint8.
    """
    if plane.dtype == np.uint8:
        return to_uint8_rgb(plane)
    return to_uint8_rgb(plane, modality, concept, intensity_range)


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def group_by_item(rows: list[dict]) -> dict[str, list[dict]]:
    """Manifest rows grouped by ``item_id`` (one item can carry several concepts)."""
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_item[r["item_id"]].append(r)
    return by_item


def _image_samples(root: Path, rows: list[dict]) -> list[Sample]:
    out = []
    for item, rs in group_by_item(rows).items():
        r0 = rs[0]
        img = root / r0["image"]
        masks = {r["concept"]: (lambda p=root / r["mask"]: _mask_png(p)) for r in rs}
        out.append(
            Sample(
                item,
                r0["split"],
                r0["source_dataset"],
                r0["modality"],
                r0["body_part"],
                lambda p=img: plane_rgb(_png(p), "none"),
                masks,
            )
        )
    return out


def _mask_png(path: Path) -> np.ndarray:
    m = _png(path)
    return (m[..., 0] if m.ndim == 3 else m) > 127


def read_volume(path: Path) -> np.ndarray:
    """(z, y, x) array of a NIfTI file via SimpleITK, in display order (medsam3.orientation)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return display_order(img.GetDirection()).to_display(sitk.GetArrayFromImage(img))


def _volume_samples(root: Path, rows: list[dict], n_slices: int) -> list[Sample]:
    out = []
    for item, rs in group_by_item(rows).items():
        r0 = rs[0]
        vol = read_volume(root / r0["image"])
        rng = None if vol.dtype == np.uint8 else volume_intensity_range(vol)
        labels = {
            r["concept"]: read_volume(root / r["mask"]) == float(r["label_value"]) for r in rs
        }
        area = np.sum([m.sum(axis=(1, 2)) for m in labels.values()], axis=0)
        zs = np.flatnonzero(area)
        if not len(zs):
            continue
        n = max(n_slices, len(labels))  # volumes labelled with many organs give more slices
        picks = sorted({int(zs[int(q * (len(zs) - 1))]) for q in np.linspace(0.2, 0.8, n)})
        for z in picks:
            masks = {c: (lambda m=m[z]: m) for c, m in labels.items() if m[z].any()}
            out.append(
                Sample(
                    f"{item}@z{z}",
                    r0["split"],
                    r0["source_dataset"],
                    r0["modality"],
                    r0["body_part"],
                    lambda p=vol[z], rng=rng, mod=r0["modality"]: plane_rgb(p, mod, rng),
                    masks,
                )
            )
    return out


COLIN27_DIR = Path("/usr/share/mricron/templates")
COLIN27_LABELS = {  # AAL label values; left/right are the patient's side
    "hippocampus": (37, 38),
    "left hippocampus": (37,),
    "right hippocampus": (38,),
    "amygdala": (41, 42),
    "caudate": (71, 72),
    "putamen": (73, 74),
    "thalamus": (77, 78),
}


def colin27_samples(templates: Path = COLIN27_DIR, n_slices: int = 12) -> list[Sample]:
    """Axial slices of the Colin27 T1 (Debian ``mricron-data``) with brain and AAL labels.

    "brain" is the skull-stripped template's support; the other concepts come from the AAL
    atlas on the same 1 mm grid. Returns [] when the package is not installed.

    Args:
        templates: folder with ch2.nii.gz, ch2bet.nii.gz and aal.nii.gz.
        n_slices: axial slices, evenly spaced over the brain's extent.

    Returns:
        Training samples (split "train").
    """
    if not all((templates / f).is_file() for f in ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz")):
        return []
    t1 = read_volume(templates / "ch2.nii.gz")
    aal = read_volume(templates / "aal.nii.gz")
    labels = {"brain": read_volume(templates / "ch2bet.nii.gz") > 0}
    labels |= {c: np.isin(aal, values) for c, values in COLIN27_LABELS.items()}
    zs = np.flatnonzero(labels["brain"].sum(axis=(1, 2)) > 0)
    picks = {int(zs[int(q * (len(zs) - 1))]) for q in np.linspace(0.1, 0.9, n_slices)}
    picks |= {int(z) for z in np.flatnonzero(labels["hippocampus"].any(axis=(1, 2)))[::6]}
    return [
        Sample(
            f"colin27@z{z}",
            "train",
            "Colin27 (mricron-data)",
            "mri",
            "brain",
            lambda p=t1[z]: plane_rgb(p, "mri"),
            {c: (lambda m=m[z]: m) for c, m in labels.items() if m[z].any()},
        )
        for z in sorted(picks)
    ]


def build_samples(
    root: Path,
    splits: tuple[str, ...],
    per_dataset_max: dict[str, int] | None = None,
    volume_slices: int = 3,
    seed: int = 0,
) -> list[Sample]:
    """Collect 2D samples (images + volume slices; no video) for the given splits.

    Args:
        root: shared data folder with manifest.csv.
        splits: e.g. ("train",) or ("val",).
        per_dataset_max: cap on samples per (dataset, split) (random subsample, seeded).
        volume_slices: labelled axial slices taken per volume.
        seed: subsampling seed.

    Returns:
        Samples in a deterministic order.
    """
    rows = [r for r in read_manifest(root) if r["split"] in splits]
    samples = _image_samples(root, [r for r in rows if r["kind"] == "image"])
    samples += _volume_samples(root, [r for r in rows if r["kind"] == "volume"], volume_slices)
    caps = per_dataset_max or {}
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.dataset, s.split)].append(s)
    out = []
    for (ds, _), group in sorted(groups.items()):
        group.sort(key=lambda s: s.item_id)
        cap = caps.get(ds, caps.get("default", len(group)))
        if len(group) > cap:
            group = random.Random(seed).sample(group, cap)
        out += group
    return out


def mask_to_frame(mask: np.ndarray, resized: tuple[int, int]) -> torch.Tensor:
    """Resize a (y, x) bool mask into the padded 256 frame.

    Args:
        mask: (y, x) bool in original pixels.
        resized: (h, w) of the image inside the frame.

    Returns:
        (256, 256) float32 soft mask in [0, 1] (area-averaged), zero in the padding.
    """
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    t = torch.nn.functional.interpolate(t, size=resized, mode="area")
    out = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
    out[: resized[0], : resized[1]] = t[0, 0]
    return out


def safe_negatives(root: Path, seen: set[str] | None = None) -> dict[str, tuple[set, set]]:
    """Easy-negative pool: concept -> (modalities, body parts) where it is annotated.

    Read from the manifest and the vocabulary. With ``seen``, only those concepts: a phrase met
    only as a negative teaches the presence head to reject the phrase itself, whatever the
    image (as happened to concepts with no annotations).
    """
    out: dict[str, tuple[set, set]] = {}
    for c in load_vocabulary():
        out[c.concept] = (set(c.modality), {c.body_part})
    for r in read_manifest(root):
        mods, parts = out.setdefault(r["concept"], (set(), set()))
        mods.add(r["modality"])
        parts.add(r["body_part"])
    return out if seen is None else {c: v for c, v in out.items() if c in seen}


def easy_negatives(meta: tuple, pool: dict, rng: random.Random, n: int) -> list[str]:
    """Up to n concepts of the pool annotated only in other modalities and body parts.

    Args:
        meta: (modality, body part, ...) of the plane.
        pool: from :func:`safe_negatives`.
        rng: seeded generator.
        n: how many.
    """
    modality, part = meta[0], meta[1]
    names = [c for c, (mods, parts) in pool.items() if modality not in mods and part not in parts]
    return rng.sample(names, min(n, len(names)))
