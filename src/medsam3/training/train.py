"""Train the compact concept head on cached, augmented LiteMedSAM views (resumable).

Usage: ``python -m medsam3.training.train configs/train_compact.yaml``. Every training plane is
encoded once per view (:mod:`medsam3.training.views`, feature cache under ``$MEDSAM3_CACHE``);
the head then trains for a fixed number of steps, sampling views balanced over datasets and
rare concepts. Every ``eval_every`` steps it is scored on val, checkpointed to
``$MEDSAM3_CACHE/train/<run_name>/last.pt`` (state dicts only, read with weights_only=True),
and the best val score so far is written to ``output`` (safetensors + JSON). After training,
the modality classifier and the per-modality presence calibration are fitted
(:mod:`medsam3.training.fit_heads`) and stored with the head.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from medsam3.models.build import resolve_device
from medsam3.models.concept_head import ConceptHead, HeadConfig
from medsam3.models.feature_cache import cache_dir
from medsam3.models.litemedsam import LiteMedSAM
from medsam3.training.config import load_config
from medsam3.training.data import easy_negatives, safe_negatives
from medsam3.training.fit_heads import finish
from medsam3.training.head_file import save_head
from medsam3.training.mixstyle import mix_styles
from medsam3.training.phrases import PhraseTable
from medsam3.training.validate import validate
from medsam3.training.views import training_views


def view_weights(meta: list[tuple], pos: list, dataset_power: float, concept_power: float):
    """Sampling weight per view: (views of its dataset) ** -dataset_power times (count of its
    rarest concept) ** -concept_power.

    Power 0 samples uniformly; dataset_power 0.5 gives a dataset with 4x the views 2x the draws
    in all (not 4x), so the large sources do not drown the small ones.
    """
    per_dataset = Counter(m[2] for m in meta)
    counts = Counter(concept for _, concept, _ in pos)
    rarest: dict[int, int] = {}
    for i, concept, _ in pos:
        rarest[i] = min(rarest.get(i, counts[concept]), counts[concept])
    return [
        per_dataset[m[2]] ** -dataset_power * float(rarest.get(i, 1)) ** -concept_power
        for i, m in enumerate(meta)
    ]


def step_lr(config: dict, step: int) -> float:
    """Learning rate at a step: linear warm-up, then cosine decay to 0 at ``steps``."""
    warmup = config.get("warmup_steps", 0)
    if step < warmup:
        return config["lr"] * (step + 1) / warmup
    progress = (step - warmup) / max(1, config["steps"] - warmup)
    return config["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return 1 - (2 * inter + 1) / (prob.sum(1) + target.sum(1) + 1)


def _batch(data, idx, rng, easy, phrases: PhraseTable, cfg) -> list[tuple]:
    """(image in batch, text vector, target or None) for positives, hard and easy negatives."""
    rows = []
    for j, s in enumerate(idx):
        mine = data["by_view"].get(s, [])
        for _, concept, target in rng.sample(mine, min(cfg["pos_per_image"], len(mine))):
            rows.append((j, phrases.training_vector(concept, rng), target.float() / 255))
        hard = data["hard"][s]
        for concept in rng.sample(hard, min(cfg.get("hard_per_image", 0), len(hard))):
            rows.append((j, phrases.training_vector(concept, rng), None))
        for concept in easy_negatives(data["meta"][s], easy, rng, cfg["neg_per_image"]):
            rows.append((j, phrases.training_vector(concept, rng), None))
    return rows


def _step(
    head: ConceptHead, data: dict, idx: list[int], rows: list, cfg: dict, generator=None
) -> torch.Tensor:
    """Loss of one batch: positives at full resolution, negatives on the cheap coarse map
    (with ``mixstyle: {p, alpha}`` in the config, the embeddings' statistics mixed first)."""
    dev = next(head.parameters()).device
    emb, frame = data["emb"][idx].to(dev).float(), data["frame"][idx].to(dev).float()
    if cfg.get("mixstyle"):
        emb = mix_styles(emb, cfg["mixstyle"]["p"], cfg["mixstyle"]["alpha"], generator)
    feats = head.image_features(emb, frame / 255)
    pos = [r for r in rows if r[2] is not None]
    neg = [r for r in rows if r[2] is None]
    loss = torch.zeros((), device=dev)
    if pos:
        index = torch.tensor([r[0] for r in pos], device=dev)
        text = torch.stack([r[1] for r in pos]).to(dev)
        presence, logits = head.decode(feats, text, index)
        target = torch.stack([r[2] for r in pos]).to(dev)[:, None]
        bce = F.binary_cross_entropy_with_logits(logits, target)
        loss = loss + cfg["bce_weight"] * bce + _dice_loss(logits, target).mean()
        ones = torch.ones_like(presence)
        loss = loss + cfg["presence_weight"] * F.binary_cross_entropy_with_logits(presence, ones)
    if neg:
        index = torch.tensor([r[0] for r in neg], device=dev)
        text = torch.stack([r[1] for r in neg]).to(dev)
        presence, coarse = head.decode(feats, text, index, True)
        zeros = torch.zeros_like(presence)
        loss = loss + cfg["presence_weight"] * F.binary_cross_entropy_with_logits(presence, zeros)
        loss = loss + F.binary_cross_entropy_with_logits(coarse, torch.zeros_like(coarse))
    return loss


def _resume(run_dir: Path, head, opt) -> tuple[int, float, dict | None, dict]:
    ckpt = run_dir / "last.pt"
    if not ckpt.is_file():
        return 0, -1.0, None, {"val": []}
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["opt"])
    history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
    return int(state["step"]), float(state["best"]), state.get("best_head"), history


def load_training(config: dict, device: str) -> tuple:
    """LiteMedSAM (it encodes the views not yet cached), the train and val views, the
    easy-negative pool and the phrase table of a training config."""
    sam = LiteMedSAM(device=device)
    data, val = training_views(config, "train", sam), training_views(config, "val", sam)
    data["by_view"] = _by_view(data["pos"])
    easy = safe_negatives(Path(config["data_root"]), seen={c for _, c, _ in data["pos"]})
    phrases = PhraseTable(config.get("raw_phrase_share", 0.0))
    return sam, data, val, easy, phrases


def train(config: dict) -> Path:
    """Train the head; resumable from ``$MEDSAM3_CACHE/train/<run_name>/last.pt``.

    Args:
        config: parsed YAML (see configs/train_compact.yaml for the keys).

    Returns:
        Path of the written head .safetensors (best val score).
    """
    torch.set_num_threads(config.get("threads", 2))
    torch.manual_seed(config.get("seed", 0))
    device = resolve_device("compact", config.get("device", "auto"))
    sam, data, val, easy, phrases = load_training(config, device)
    head = ConceptHead(HeadConfig(**config.get("head", {}))).to(device)
    if config.get("init_from"):
        grow_from(head, load_file(config["init_from"]))
    opt = torch.optim.AdamW(head.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    run_dir = cache_dir() / "train" / config.get("run_name", "compact")
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = (0, -1.0, None, {"val": []})
    step, best, best_head, history = _resume(run_dir, head, opt) if config.get("resume") else fresh
    weights = view_weights(
        data["meta"], data["pos"], config.get("dataset_power", 0.0), config.get("balance", 0.0)
    )
    rng = random.Random(config.get("seed", 0) * 1000 + step)
    generator = torch.Generator().manual_seed(config.get("seed", 0) * 1000 + step)
    t0 = time.time()
    views, positives = len(data["meta"]), len(data["pos"])
    print(f"training on {views} views, {positives} positives ({device})", flush=True)
    while step < config["steps"]:
        for group in opt.param_groups:
            group["lr"] = step_lr(config, step)
        idx = rng.choices(range(len(weights)), weights=weights, k=config["batch_images"])
        rows = _batch(data, idx, rng, easy, phrases, config)
        loss = _step(head, data, idx, rows, config, generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % config["eval_every"] and step != config["steps"]:
            continue
        metrics = validate(head, val, phrases, easy)
        history["val"].append({"step": step, "loss": float(loss.detach()), **metrics})
        print(
            f"step {step} ({time.time() - t0:.0f} s): loss {loss.item():.4f} val {metrics}",
            flush=True,
        )
        if metrics["score"] > best:
            best, best_head = metrics["score"], {k: v.clone() for k, v in head.state_dict().items()}
            save_head(head, Path(config["output"]), {"training": {"step": step, "val": metrics}})
        state = {"head": head.state_dict(), "opt": opt.state_dict(), "step": step}
        torch.save({**state, "best": best, "best_head": best_head}, run_dir / "last.pt")
        (run_dir / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    output = Path(config["output"])
    if best_head is not None:
        head.load_state_dict(best_head)
        facts = finish(output, head.eval(), data, val, phrases, easy, sam)
        print(f"fitted: {json.dumps(facts)[:2000]}", flush=True)
    return output


def grow_from(head: ConceptHead, state: dict[str, torch.Tensor]) -> None:
    """Start ``head`` from a smaller head's weights, computing the same function.

    Matching tensors are copied. A projection with fewer input channels (a head without
    ``coords``) fills the leading channels and the new ones start at zero; ``context`` blocks
    and a ``global_context`` branch the old head lacks end in a zero norm gain, so their
    residual adds nothing until trained; a new ``image_context`` branch ends in a zero 1x1
    convolution, so it adds nothing either. Tensors of the file the head does not have (the
    modality classifier) are skipped.
    """
    own = head.state_dict()
    for name, value in state.items():
        if name not in own:
            continue
        if own[name].shape == value.shape:
            own[name] = value
        elif name == "proj.0.weight" and _wider_input(own[name].shape, value.shape):
            own[name] = torch.zeros_like(own[name])
            own[name][:, : value.shape[1]] = value
        else:
            raise ValueError(f"{name}: {tuple(value.shape)} cannot start {tuple(own[name].shape)}")
    head.load_state_dict(own)
    new_blocks = [block for i, block in enumerate(head.context) if not _has(state, f"context.{i}.")]
    if head.global_context is not None and not _has(state, "global_context."):
        new_blocks.append(head.global_context[-1])
    for block in new_blocks:
        norm = next(m for m in block if isinstance(m, torch.nn.GroupNorm))
        torch.nn.init.zeros_(norm.weight)  # the residual adds nothing until trained
    if head.image_context is not None and not _has(state, "image_context."):
        torch.nn.init.zeros_(head.image_context[-1].weight)
        torch.nn.init.zeros_(head.image_context[-1].bias)


def _has(state: dict, prefix: str) -> bool:
    return any(name.startswith(prefix) for name in state)


def _wider_input(own: torch.Size, old: torch.Size) -> bool:
    """True when a weight differs from the old one only by more input channels."""
    return own[1] > old[1] and own[0] == old[0] and own[2:] == old[2:]


def _by_view(pos: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for p in pos:
        out.setdefault(p[0], []).append(p)
    return out


def main(config_path: str) -> None:
    """Entry point: read the YAML config and train.

    Args:
        config_path: path to a YAML file like configs/train_compact.yaml.
    """
    print(f"wrote {train(load_config(config_path))}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/train_compact.yaml")
