"""Leave-one-dataset-out: train without a fold's datasets, evaluate on each of them.

Usage: ``python -m medsam3.training.lodo configs/lodo.yaml`` (resumable: finished folds and
evaluations are kept). Writes ``<out>/<fold>/head.safetensors``, ``<out>/<fold>/<dataset
slug>/summary.json`` and ``<out>/lodo.md`` (Dice per held-out dataset and concept, and their
mean).

``--presence-sweep`` (after the folds are trained) evaluates every held-out dataset again
with every pair segmented, into ``<out>/<fold>/<dataset slug>/ungated/``, and prints the
presence threshold sweep of :mod:`medsam3.training.presence_threshold`. ``--out`` reads and
writes another folder of fold heads (e.g. copies whose JSON was refitted).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import yaml

from medsam3.training import presence_threshold
from medsam3.training.config import load_config
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
    base: dict,
    fold: str,
    held_out: list[str],
    out: Path,
    max_items: int = 40,
    skip: list[str] | tuple[str, ...] = (),
) -> list[dict]:
    """Train one fold (unless done) and evaluate each held-out dataset not in skip (unless
    done)."""
    head = out / fold / "head.safetensors"
    run_name = f"{out.name}_{fold}"  # results/lodo -> lodo_a; another out keeps its own runs
    config = dict(base, output=str(head), run_name=run_name, exclude_datasets=held_out)
    if not (out / fold / "done").is_file():
        train(config)
        (out / fold / "done").write_text("trained\n", encoding="utf-8")
    rows = []
    for dataset in [d for d in held_out if d not in skip]:
        target = out / fold / slug(dataset)
        evaluate_held_out(base["data_root"], head, dataset, target, max_items)
        summary = json.loads((target / "summary.json").read_text(encoding="utf-8"))["summary"]
        rows.append({"fold": fold, "dataset": dataset, **summary})
    return rows


def evaluate_held_out(
    data_root: str, head: Path, dataset: str, target: Path, max_items: int, *more: str
) -> None:
    """``evaluate --split all`` of one held-out dataset into target (unless done)."""
    if (target / "summary.json").is_file():
        return
    args = ["--data", data_root, "--checkpoint", str(head), "--out", str(target)]
    args += ["--max-items", str(max_items), "--no-synonyms", *more]
    evaluate_main([*args, "--split", "all", "--datasets", dataset])


def sweep_fold(
    base: dict,
    fold: str,
    held_out: list[str],
    out: Path,
    max_items: int,
    skip: list[str] | tuple[str, ...] = (),
) -> None:
    """Evaluate a trained fold's held-out datasets with every pair segmented (unless done)."""
    head = out / fold / "head.safetensors"
    if not head.is_file():
        raise FileNotFoundError(f"{head}: train the folds first (without --presence-sweep)")
    for dataset in [d for d in held_out if d not in skip]:
        target = out / fold / slug(dataset) / presence_threshold.UNGATED
        evaluate_held_out(
            base["data_root"], head, dataset, target, max_items, "--presence-threshold", "0"
        )


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


def load_lodo(path: str | Path) -> tuple[dict, dict]:
    """A LODO config and the training config its folds run: ``base`` (beside the LODO file)
    with its own bases resolved, then ``overrides`` (e.g. fewer steps, or ``init_from: null``
    so that no fold starts from a head that saw its held-out datasets)."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    base = load_config(Path(path).parent / config["base"])
    base.update(config.get("overrides") or {})
    return config, base


def main(argv: list[str] | None = None) -> None:
    """Run every fold of a LODO config and write the table (or the presence sweep)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/lodo.yaml")
    ap.add_argument("--presence-sweep", action="store_true", help="see the module docstring")
    ap.add_argument("--out", default=None, help="folder of the folds (default: the config's)")
    args = ap.parse_args(argv)
    config, base = load_lodo(args.config)
    names = sorted({r["source_dataset"] for r in read_manifest(Path(base["data_root"]))})
    out = Path(args.out or config["out"])
    max_items = config.get("max_items", 40)
    skip = match_datasets(names, config.get("not_evaluated") or [])
    rows = []
    for fold, prefixes in config["folds"].items():
        held_out = match_datasets(names, prefixes)
        if args.presence_sweep:
            sweep_fold(base, fold, held_out, out, max_items, skip)
            continue
        rows += run_fold(base, fold, held_out, out, max_items, skip)
        (out / "lodo.md").write_text(table(rows), encoding="utf-8")
    if args.presence_sweep:
        print(presence_threshold.markdown(presence_threshold.fit(out)))
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
