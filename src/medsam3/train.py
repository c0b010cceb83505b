"""Train the compact concept head on cached LiteMedSAM features (resumable).

Usage: ``python -m medsam3.train configs/train_compact.yaml``. Features are cached under
``$MEDSAM3_CACHE`` (see :mod:`medsam3.training_data`); the run checkpoints every epoch to
``$MEDSAM3_CACHE/train/<run_name>/last.pt`` (state dicts only, loaded with weights_only=True)
and writes the best epoch on val to ``output`` (safetensors + JSON).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

from medsam3.models.concept_head import ConceptHead, HeadConfig
from medsam3.models.concepts import load_vocabulary
from medsam3.training_data import (
    build_samples,
    cache_dir,
    cache_samples,
    colin27_samples,
    mask_to_frame,
    read_manifest,
)


def sample_weights(pos: list, n: int, power: float) -> list[float]:
    """Sampling weight per training image: its rarest concept's count ** -power.

    power 0 samples uniformly; 0.5 draws an image whose rarest concept has 4 examples twice as
    often as one whose concepts have 16 each, so rare concepts are seen more per epoch.
    """
    counts = Counter(concept for _, concept, _ in pos)
    rarest: dict[int, int] = {}
    for i, concept, _ in pos:
        rarest[i] = min(rarest.get(i, counts[concept]), counts[concept])
    return [float(rarest.get(s, 1)) ** -power for s in range(n)]


def epoch_lr(config: dict, epoch: int) -> float:
    """Learning rate of an epoch: constant, or cosine-decayed to 0 over ``epochs``."""
    if config.get("lr_schedule", "constant") != "cosine":
        return config["lr"]
    return config["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / config["epochs"]))


def _training_negatives(safe: dict, pos: list, seen_only: bool) -> dict:
    """Negative-phrase pool for training batches.

    With ``seen_only``, only concepts that are also positives somewhere in the training data:
    a phrase met only as a negative teaches the presence head to reject the phrase itself,
    whatever the image (which is what happened to concepts with no annotations).
    """
    if not seen_only:
        return safe
    seen = {concept for _, concept, _ in pos}
    return {c: v for c, v in safe.items() if c in seen}


def _safe_negatives(root: Path) -> dict[str, tuple[set, set]]:
    """concept -> (modalities, body parts) where it is annotated (manifest + vocabulary)."""
    out: dict[str, tuple[set, set]] = {}
    for c in load_vocabulary():
        out[c.concept] = (set(c.modality), {c.body_part})
    for r in read_manifest(root):
        mods, parts = out.setdefault(r["concept"], (set(), set()))
        mods.add(r["modality"])
        parts.add(r["body_part"])
    return out


def load_split(config: dict, split: str, sam) -> dict:
    """Encode (or read cached) samples of one split and build training tensors.

    Args:
        config: training config.
        split: "train" or "val".
        sam: LiteMedSAM wrapper (only used for planes missing from the cache).

    Returns:
        {"emb": (S, 256, 64, 64) float16, "frame": (S, 3, 256, 256) uint8,
        "pos": [(sample index, concept, (256, 256) uint8 target)], "meta": [(modality, part)]}.
    """
    from medsam3.training_data import feature_path

    root = Path(config["data_root"])
    caps = config.get("per_dataset_max", {}).get(split, {})
    samples = build_samples(root, (split,), caps, config.get("volume_slices", 3))
    if split == "train" and config.get("atlas_slices", 0):
        samples += colin27_samples(n_slices=config["atlas_slices"])
    samples = samples[: config.get("max_samples", len(samples))]
    index = cache_samples(samples, sam, cache_dir() / f"index_{split}.json")
    emb, frame, pos, meta = [], [], [], []
    for i, s in enumerate(samples):
        entry = load_file(feature_path(index[s.item_id]["digest"]))
        emb.append(entry["embedding"])
        frame.append(entry["frame"])
        resized = tuple(int(v) for v in entry["geometry"][2:])
        meta.append((s.modality, s.body_part))
        for concept, load in s.masks.items():
            target = (mask_to_frame(load(), resized) * 255).round().to(torch.uint8)
            pos.append((i, concept, target))
    return {"emb": torch.stack(emb), "frame": torch.stack(frame), "pos": pos, "meta": meta}


def _phrases() -> dict[str, list[str]]:
    return {c.concept: [c.concept, *c.synonyms] for c in load_vocabulary()}


def _negatives(meta, safe, rng: random.Random, n: int) -> list[str]:
    mod, part = meta
    pool = [c for c, (mods, parts) in safe.items() if mod not in mods and part not in parts]
    return rng.sample(pool, min(n, len(pool)))


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return 1 - (2 * inter + 1) / (prob.sum(1) + target.sum(1) + 1)


def _batch(data, idx, rng, safe, phrases, text_of, cfg):
    """Pairs for a batch of sample indices: (image index, text, target or None, present)."""
    by_sample: dict[int, list] = {}
    for p in data["pos"]:
        by_sample.setdefault(p[0], []).append(p)
    rows = []
    for j, s in enumerate(idx):
        chosen = rng.sample(
            by_sample.get(s, []), min(cfg["pos_per_image"], len(by_sample.get(s, [])))
        )
        for _, concept, target in chosen:
            phrase = rng.choice(phrases.get(concept, [concept]))
            rows.append((j, text_of(phrase), target.float() / 255, 1.0))
        for concept in _negatives(data["meta"][s], safe, rng, cfg["neg_per_image"]):
            phrase = rng.choice(phrases.get(concept, [concept]))
            rows.append((j, text_of(phrase), None, 0.0))
    return rows


def _step(head, data, idx, rows, cfg) -> torch.Tensor:
    """Loss of one batch: positives at full resolution, negatives on the cheap coarse map."""
    feats = head.image_features(data["emb"][idx].float(), data["frame"][idx].float() / 255)
    pos = [r for r in rows if r[3] > 0]
    neg = [r for r in rows if r[3] == 0]
    loss = torch.zeros(())
    if pos:
        index = torch.tensor([r[0] for r in pos])
        presence, logits = head.decode(feats, torch.stack([r[1] for r in pos]), index)
        target = torch.stack([r[2] for r in pos])[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, target)
        loss = loss + cfg["bce_weight"] * bce + _dice_loss(logits, target).mean()
        ones = torch.ones_like(presence)
        loss = loss + cfg["presence_weight"] * F.binary_cross_entropy_with_logits(presence, ones)
    if neg:
        index = torch.tensor([r[0] for r in neg])
        presence, coarse = head.decode(feats, torch.stack([r[1] for r in neg]), index, True)
        zeros = torch.zeros_like(presence)
        loss = loss + cfg["presence_weight"] * F.binary_cross_entropy_with_logits(presence, zeros)
        loss = loss + F.binary_cross_entropy_with_logits(coarse, torch.zeros_like(coarse))
    return loss


@torch.no_grad()
def validate(head: ConceptHead, data: dict, text_of, safe, seed: int = 0) -> dict:
    """Dense-mask Dice over val positives and presence MCC over positives + safe negatives.

    Returns:
        {"dice": mean Dice over pairs (frame resolution), "concept_dice": mean of per-concept
        means, "mcc": presence MCC, "score": mean of the two Dice figures + mcc}.
    """
    head.eval()
    rng = random.Random(seed)
    dices, labels, probs = defaultdict(list), [], []
    for s in range(len(data["meta"])):
        feats = head.image_features(data["emb"][s : s + 1].float(), data["frame"][s : s + 1] / 255)
        pos = [p for p in data["pos"] if p[0] == s]
        negs = _negatives(data["meta"][s], safe, rng, 2)
        pres, logits = head.decode(feats, torch.stack([text_of(p[1]) for p in pos]))
        if negs:
            neg_pres, _ = head.decode(feats, torch.stack([text_of(c) for c in negs]), None, True)
            pres = torch.cat([pres, neg_pres])
        for k, p in enumerate(pos):
            pred = logits[k, 0] > 0
            gt = p[2] > 127
            inter = 2 * (pred & gt).sum().item()
            dices[p[1]].append(inter / max(1, pred.sum().item() + gt.sum().item()))
        labels += [1] * len(pos) + [0] * len(negs)
        probs += torch.sigmoid(pres).tolist()
    head.train()
    mcc = matthews(np.array(labels), np.array(probs) > 0.5)
    pair = float(np.mean([d for ds in dices.values() for d in ds]))
    concept = float(np.mean([np.mean(ds) for ds in dices.values()]))
    return {"dice": pair, "concept_dice": concept, "mcc": mcc, "score": (pair + concept) / 2 + mcc}


def matthews(y: np.ndarray, pred: np.ndarray) -> float:
    """Matthews correlation of two boolean vectors (0 when undefined)."""
    y, pred = y.astype(bool), pred.astype(bool)
    tp, tn = float(np.sum(y & pred)), float(np.sum(~y & ~pred))
    fp, fn = float(np.sum(~y & pred)), float(np.sum(y & ~pred))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den > 0 else 0.0


def _text_lookup():
    from medsam3.models.text_encoder import shared_text_encoder

    enc = shared_text_encoder()
    table: dict[str, torch.Tensor] = {}

    def text_of(phrase: str) -> torch.Tensor:
        if phrase not in table:
            table[phrase] = torch.from_numpy(enc.condition([phrase])[0])
        return table[phrase]

    return text_of


def save_head(head: ConceptHead, path: Path, extra: dict) -> Path:
    """Write head weights (safetensors) and a sibling JSON with config, concepts and sha256.

    Args:
        head: the trained head.
        path: target .safetensors path.
        extra: metrics / training facts stored in the JSON.

    Returns:
        The safetensors path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().float() for k, v in head.state_dict().items()}
    save_file(state, str(path), metadata={"format": "medsam3-compact-head-v1"})
    path.chmod(0o644)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        "config": head.cfg.to_dict(),
        "concepts": [c.concept for c in load_vocabulary()],
        "sha256": digest,
        **extra,
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return path


def _resume(run_dir: Path, head, opt) -> tuple[int, float, dict | None]:
    ckpt = run_dir / "last.pt"
    if not ckpt.is_file():
        return 0, -1.0, None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["opt"])
    return int(state["epoch"]), float(state["best"]), state.get("best_head")


def train(config: dict) -> Path:
    """Train the head; resumable from ``$MEDSAM3_CACHE/train/<run_name>/last.pt``.

    Args:
        config: parsed YAML (see configs/train_compact.yaml for the keys).

    Returns:
        Path of the written head .safetensors (best val epoch).
    """
    from tqdm import tqdm

    from medsam3.models.litemedsam import LiteMedSAM

    torch.set_num_threads(config.get("threads", 2))
    torch.manual_seed(config.get("seed", 0))
    sam = LiteMedSAM()
    data = load_split(config, "train", sam)
    val = load_split(config, "val", sam)
    safe = _safe_negatives(Path(config["data_root"]))
    train_safe = _training_negatives(safe, data["pos"], config.get("seen_negatives_only", False))
    phrases, text_of = _phrases(), _text_lookup()
    head = ConceptHead(HeadConfig(**config.get("head", {})))
    if config.get("init_from"):
        head.load_state_dict(load_file(config["init_from"]))
    opt = torch.optim.AdamW(head.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    run_dir = cache_dir() / "train" / config.get("run_name", "compact")
    run_dir.mkdir(parents=True, exist_ok=True)
    start, best, best_head = _resume(run_dir, head, opt) if config.get("resume") else (0, -1, None)
    t0, n = time.time(), len(data["meta"])
    weights = sample_weights(data["pos"], n, config.get("balance", 0.0))
    for epoch in range(start, config["epochs"]):
        rng = random.Random(config.get("seed", 0) * 1000 + epoch)
        if config.get("balance"):
            order = rng.choices(range(n), weights=weights, k=n)
        else:
            order = rng.sample(range(n), n)  # a plain permutation, as in stage 1
        for group in opt.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        bs = config["batch_images"]
        for b in tqdm(range(0, n, bs), desc=f"epoch {epoch}", mininterval=5):
            idx = order[b : b + bs]
            loss = _step(
                head,
                data,
                idx,
                _batch(data, idx, rng, train_safe, phrases, text_of, config),
                config,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        metrics = validate(head, val, text_of, safe)
        print(f"epoch {epoch}: loss {loss.item():.4f} val {metrics}", flush=True)
        if metrics["score"] > best:
            best = metrics["score"]
            best_head = {k: v.clone() for k, v in head.state_dict().items()}
            best_metrics = {"epoch": epoch, "val": metrics}
            save_head(head, Path(config["output"]), {"training": best_metrics})
        state = {"head": head.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1}
        torch.save({**state, "best": best, "best_head": best_head}, run_dir / "last.pt")
        if time.time() - t0 > config.get("max_minutes", 1e9) * 60:
            print(f"stopping after epoch {epoch}: max_minutes reached", flush=True)
            break
    if best_head is not None and not Path(config["output"]).is_file():
        head.load_state_dict(best_head)
        save_head(head, Path(config["output"]), {"training": {"best_score": best}})
    return Path(config["output"])


def load_config_caps(split: str, config_path: str | None = None) -> dict:
    """Per-dataset caps of one split from the training config (default: the shipped one)."""
    path = Path(config_path) if config_path else Path(__file__).parents[2] / "configs"
    path = path / "train_compact.yaml" if path.is_dir() else path
    if not path.is_file():
        return {}
    return (
        yaml.safe_load(path.read_text(encoding="utf-8")).get("per_dataset_max", {}).get(split, {})
    )


def main(config_path: str) -> None:
    """Entry point: read the YAML config and train.

    Args:
        config_path: path to a YAML file like configs/train_compact.yaml.
    """
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    print(f"wrote {train(config)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/train_compact.yaml")
