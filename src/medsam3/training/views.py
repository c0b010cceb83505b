"""Cached augmented views of the training planes, and the tensors the head trains on.

Each training plane (:class:`medsam3.training.data.Sample`) gets view 0 (itself) and a few seeded
augmented views (:mod:`medsam3.training.augment`); every view is encoded once by LiteMedSAM into
the feature cache. Small datasets get more views than large ones, so that the augmented
training set is less dominated by the few large sources.

Negatives per view are of two kinds:
- hard: concepts annotated somewhere in the view's own dataset but absent from this view (a
  dataset annotates its concepts on every image, so their absence is reliable);
- easy: concepts of other modalities and body parts (drawn at training time).
Concepts of the same modality from other datasets are never negatives: a CT slice from a liver
dataset shows a spleen nobody outlined.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from medsam3.models.feature_cache import cache_dir, encode_cached, feature_path
from medsam3.models.litemedsam import LiteMedSAM, prepare_image
from medsam3.training.augment import (
    IDENTITY,
    ViewParams,
    apply_view,
    draw_view,
    swap_side,
    view_masks,
)
from medsam3.training.data import Sample, build_samples, colin27_samples, mask_to_frame

MIN_TARGET_PIXELS = 4  # a concept cut down to fewer frame pixels by a crop is left out


@dataclass
class View:
    """One view of a training plane: its sample, index and parameters."""

    sample: Sample
    index: int
    params: ViewParams

    @property
    def key(self) -> str:
        """Cache-index key: item id and view number."""
        return f"{self.sample.item_id}#v{self.index}"

    def render(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The view's (y, x, 3) uint8 plane and concept -> (y, x) bool masks."""
        masks = {c: load() for c, load in self.sample.masks.items()}
        return apply_view(self.sample.load_rgb(), masks, self.params)


def augment_counts(samples: list[Sample], target: int, low: int, high: int) -> dict[str, int]:
    """Augmented views per plane of each dataset: about ``target`` views per dataset in all,
    at least ``low`` and at most ``high`` per plane."""
    sizes = Counter(s.dataset for s in samples)
    return {ds: int(np.clip(round(target / n) - 1, low, high)) for ds, n in sizes.items()}


def plan_views(samples: list[Sample], counts: dict[str, int], seed: int = 0) -> list[View]:
    """View 0 of every sample plus ``counts[dataset]`` seeded augmented views.

    Args:
        samples: training planes.
        counts: augmented views per plane by dataset (0 when missing).
        seed: base seed; a view's parameters depend only on it, the item id and the view number.

    Returns:
        Views, grouped by sample.
    """
    dataset_concepts = concepts_by_dataset(samples)
    views = []
    for s in samples:
        views.append(View(s, 0, IDENTITY))
        named = sorted(dataset_concepts[s.dataset])
        color = s.modality in ("dermoscopy", "endoscopy", "fundus", "histopathology", "microscopy")
        for k in range(1, counts.get(s.dataset, 0) + 1):
            rng = random.Random(f"{seed}/{s.item_id}/{k}")
            views.append(View(s, k, draw_view(rng, s.modality, named, color)))
    return views


def concepts_by_dataset(samples: list[Sample]) -> dict[str, set[str]]:
    """Concepts annotated anywhere in each dataset (the hard-negative pool of its planes)."""
    out: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        out[s.dataset] |= set(s.masks)
    return out


def encode_views(views: list[View], sam: LiteMedSAM, index_path: Path) -> dict:
    """Encode every view not cached yet; the index maps view key -> {digest, params}.

    Args:
        views: planned views.
        sam: LiteMedSAM wrapper.
        index_path: JSON index, rewritten every 50 views (the run resumes where it stopped).
            Views are encoded by view number, so an interrupted run leaves whole rounds.

    Returns:
        The index.
    """
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    index_path.parent.mkdir(parents=True, exist_ok=True)
    todo = [v for v in views if not _cached(index.get(v.key), v)]
    todo.sort(key=lambda v: v.index)  # every plane's view 0 first, then view 1, ...
    for n, view in enumerate(tqdm(todo, desc="encode views", mininterval=30), 1):
        rgb, _ = view.render()
        prep = prepare_image(rgb)
        encode_cached(sam, prep)
        index[view.key] = {"digest": prep.digest, "params": asdict(view.params)}
        if n % 50 == 0 or n == len(todo):
            _write_json(index_path, index)
    return index


def _cached(entry: dict | None, view: View) -> bool:
    if not entry or entry["params"] != json.loads(json.dumps(asdict(view.params))):
        return False
    return feature_path(entry["digest"]).is_file()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def load_views(views: list[View], index: dict) -> dict:
    """Training tensors of encoded views.

    Returns:
        {"emb": (V, 256, 64, 64) float16, "frame": (V, 3, 256, 256) uint8,
        "pos": [(view index, concept, (256, 256) uint8 target)],
        "hard": [[concept absent from the view but annotated in its dataset]],
        "meta": [(modality, body part, dataset)], "resized": [(h, w) inside the frame]}.
    """
    dataset_concepts = concepts_by_dataset([v.sample for v in views])
    emb, frame, pos, hard, meta, sizes = [], [], [], [], [], []
    for i, view in enumerate(views):
        entry = load_file(feature_path(index[view.key]["digest"]))
        emb.append(entry["embedding"])
        frame.append(entry["frame"])
        resized = tuple(int(v) for v in entry["geometry"][2:])
        sizes.append(resized)
        masks = view_masks({c: load() for c, load in view.sample.masks.items()}, view.params)
        present = set()
        for concept, mask in masks.items():
            target = (mask_to_frame(mask, resized) * 255).round().to(torch.uint8)
            if (target > 127).sum() >= MIN_TARGET_PIXELS:
                pos.append((i, concept, target))
            if mask.any():
                present.add(concept)
        named = dataset_concepts[view.sample.dataset]
        named = {swap_side(c) for c in named} if view.params.hflip else named
        hard.append(sorted(named - present))
        meta.append((view.sample.modality, view.sample.body_part, view.sample.dataset))
    return {
        "emb": torch.stack(emb),
        "frame": torch.stack(frame),
        "pos": pos,
        "hard": hard,
        "meta": meta,
        "resized": sizes,
    }


def training_views(config: dict, split: str, sam: LiteMedSAM) -> dict:
    """Plan, encode (cached) and load the views of one split.

    Train gets augmented views (``augment_target``, ``augment_min``, ``augment_max``) and the
    Colin27 atlas slices; val gets each plane once. Datasets in ``exclude_datasets`` (a
    leave-one-dataset-out run) are left out of both.

    Returns:
        The tensors of :func:`medsam3.training.views.load_views`.
    """
    samples, counts = split_samples(config, split)
    views = plan_views(samples, counts, config.get("seed", 0))
    index = encode_views(views, sam, cache_dir() / f"views_{split}.json")
    return load_views(views, index) | {"samples": [v.sample for v in views]}


def split_samples(config: dict, split: str) -> tuple[list[Sample], dict[str, int]]:
    """The planes of one split that :func:`training_views` reads, and their augmented-view
    counts (train only), without encoding anything.

    Returns:
        ([Sample], {sample key: augmented views}).
    """
    root = Path(config["data_root"])
    caps = config.get("per_dataset_max", {}).get(split, {})
    samples = build_samples(root, (split,), caps, config.get("volume_slices", 3))
    counts = {}
    if split == "train":
        samples += colin27_samples(n_slices=config.get("atlas_slices", 0) or 0)
        low, high = config.get("augment_min", 0), config.get("augment_max", 0)
        counts = augment_counts(samples, config.get("augment_target", 0), low, high)
    excluded = set(config.get("exclude_datasets", []))
    samples = [s for s in samples if s.dataset not in excluded]
    return samples[: config.get("max_samples", len(samples))], counts
