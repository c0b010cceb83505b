"""Leave-one-dataset-out: train without a fold's datasets, evaluate on each of them.

Usage: ``python -m medsam3.training.lodo configs/lodo.yaml`` (resumable: finished folds and
evaluations are kept). Writes ``<out>/<fold>/head.safetensors``, ``<out>/<fold>/<dataset
slug>/summary.json`` and ``<out>/lodo.md`` (Dice per held-out dataset and concept, and their
mean).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from medsam3.training.data import read_manifest
from medsam3.training.evaluate import main as evaluate_main
from medsam3.training.train import train


def match_datasets(names: list[str], prefixes: list[str]) -> list[str]:
    """The dataset each prefix names (exactly one dataset must start with it)."""
    out = []
    for prefix in prefixes:
        hits = [n for n in names if n.startswith(prefix)]
        if len(hits) != 1:
            raise ValueError(f"{prefix!r} matches {len(hits)} datasets, not one: {hits}")
        out.append(hits[0])
    return out


def slug(name: str) -> str:
    """A file-safe name for a dataset."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]


def run_fold(
    base: dict, fold: str, held_out: list[str], out: Path, max_items: int = 40
) -> list[dict]:
    """Train one fold (unless done) and evaluate each held-out dataset (unless done)."""
    head = out / fold / "head.safetensors"
    config = dict(base, output=str(head), run_name=f"lodo_{fold}", exclude_datasets=held_out)
    if not (out / fold / "done").is_file():
        train(config)
        (out / fold / "done").write_text("trained\n", encoding="utf-8")
    rows = []
    for dataset in held_out:
        target = out / fold / slug(dataset)
        if not (target / "summary.json").is_file():
            args = ["--data", base["data_root"], "--checkpoint", str(head), "--out", str(target)]
            args += ["--max-items", str(max_items), "--no-synonyms"]
            evaluate_main([*args, "--split", "all", "--datasets", dataset])
        summary = json.loads((target / "summary.json").read_text(encoding="utf-8"))["summary"]
        rows.append({"fold": fold, "dataset": dataset, **summary})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: one line per held-out dataset, then the mean over datasets."""
    lines = [
        "| fold | held-out dataset | pairs | Dice over pairs | per concept |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        concepts = ", ".join(f"{c} {v['dice']:.2f}" for c, v in r["per_concept"].items())
        lines.append(
            f"| {r['fold']} | {r['dataset']} | {r['n_pairs']} | "
            f"{r['mean_dice_pairs']:.3f} | {concepts} |"
        )
    mean = float(np.mean([r["mean_dice_pairs"] for r in rows]))
    lines.append(f"\nMean over {len(rows)} held-out datasets: **{mean:.3f}**")
    return "\n".join(lines) + "\n"


def main(config_path: str) -> None:
    """Run every fold of a LODO config and write the table."""
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    base = yaml.safe_load(Path(config["base"]).read_text(encoding="utf-8"))
    base.update(config.get("overrides") or {})  # e.g. fewer steps on a small budget
    names = sorted({r["source_dataset"] for r in read_manifest(Path(base["data_root"]))})
    out = Path(config["out"])
    rows = []
    for fold, prefixes in config["folds"].items():
        held_out = match_datasets(names, prefixes)
        rows += run_fold(base, fold, held_out, out, config.get("max_items", 40))
        (out / "lodo.md").write_text(table(rows), encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/lodo.yaml")
