"""Average concept heads of one architecture (a "model soup") and refit what training fits last.

Usage::

    python -m medsam3.training.soup configs/train_compact_v8.yaml OUT.safetensors \\
        results/heads/v7/compact_head.safetensors results/heads/v8/compact_head.safetensors

The heads must share one architecture and, for the average to be a good model, one training
trajectory (a head and the heads trained on from it). Their concept-head tensors are averaged
(the modality classifier stored beside them is not: it is refitted), the average is scored on
val like a training checkpoint, and :func:`medsam3.training.fit_heads.finish` fits its
modality classifier, presence calibration, mask cut and ``no_refine`` on the config's views.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from medsam3.models.build import resolve_device
from medsam3.models.compact import load_head
from medsam3.models.concept_head import ConceptHead
from medsam3.training.config import load_config
from medsam3.training.fit_heads import finish
from medsam3.training.head_file import save_head
from medsam3.training.train import load_training
from medsam3.training.validate import validate


def average_heads(paths: list[Path]) -> ConceptHead:
    """A head whose tensors are the mean of the heads' (each read by :func:`load_head`, its
    architecture from its JSON; their modality classifiers are left out, to be refitted)."""
    if len(paths) < 2:
        raise ValueError(f"a soup needs two or more heads, got {len(paths)}")
    heads = [load_head(p)[0] for p in paths]
    for path, head in zip(paths[1:], heads[1:], strict=True):
        if head.cfg != heads[0].cfg:
            raise ValueError(f"{path}: not the architecture of {paths[0]} ({head.cfg})")
    states = [h.state_dict() for h in heads]
    soup = ConceptHead(heads[0].cfg)
    soup.load_state_dict({n: torch.stack([s[n] for s in states]).mean(0) for n in states[0]})
    return soup


def make_soup(config: dict, heads: list[Path], output: Path) -> dict:
    """Average ``heads`` into ``output`` and fit its modality classifier and calibration on the
    views of ``config``.

    Returns:
        The val metrics of the average (as a training checkpoint is scored).
    """
    torch.set_num_threads(config.get("threads", 2))
    device = resolve_device("compact", config.get("device", "auto"))
    head = average_heads(heads).to(device).eval()
    sam, data, val, easy, phrases = load_training(config, device)
    metrics = validate(head, val, phrases, easy)
    soup = {"heads": [str(p) for p in heads]}
    save_head(head, output, {"training": {"soup": soup, "val": metrics}})
    finish(output, head, data, val, phrases, easy, sam)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="training config whose views and val to use")
    ap.add_argument("output", help="the averaged head (.safetensors; its JSON beside it)")
    ap.add_argument("heads", nargs="+", help="two or more head files of one architecture")
    args = ap.parse_args(argv)
    metrics = make_soup(load_config(args.config), [Path(h) for h in args.heads], Path(args.output))
    print(f"val {metrics}\nwrote {args.output}")


if __name__ == "__main__":
    main()
