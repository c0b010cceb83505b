"""The training data of a head as a Markdown table, generated from the shared data's manifest.

Usage:
    python -m medsam3.training.datacard ../shared/data > data_table.md

One row per source dataset: modality, items per split, concepts, licence and whether its masks
are model output. The model card embeds this table, so its data section never drifts from the
manifest the head was trained on.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from medsam3.training.data import read_manifest

RESTRICTED = re.compile(r"non-?commercial|research|-nc-|unknown|not stated", re.I)
MODEL_MADE = re.compile(r"(model|cnn)\b[^;]*\boutput|totalsegmentator", re.I)


def dataset_rows(root: Path) -> list[dict]:
    """Per-dataset summary rows of a shared data manifest, sorted by modality then name."""
    items: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    info: dict[str, dict] = {}
    for row in read_manifest(root):
        name = row["source_dataset"]
        items[name][row["split"]].add(row["item_id"])
        entry = info.setdefault(name, {"concepts": set(), "modality": row["modality"]})
        entry["concepts"].add(row["concept"])
        entry["license"] = row["license"]
    rows = []
    for name, entry in info.items():
        licence = entry["license"]
        rows.append(
            {
                "dataset": name,
                "modality": entry["modality"],
                **{s: len(items[name].get(s, ())) for s in ("train", "val", "test")},
                "concepts": ", ".join(sorted(entry["concepts"])),
                "license": licence,
                "restricted": bool(RESTRICTED.search(licence)),
                "model_made": bool(MODEL_MADE.search(name)),
            }
        )
    return sorted(rows, key=lambda r: (r["modality"], r["dataset"].lower()))


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (licence text cut at 90 characters)."""
    lines = [
        "| dataset | modality | train | val | test | concepts | licence | terms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = ["research only / non-commercial / unstated"] if r["restricted"] else []
        flags += ["model-made masks"] if r["model_made"] else []
        terms = ", ".join(flags)
        licence = r["license"] if len(r["license"]) <= 90 else r["license"][:87] + "..."
        cells = [r["dataset"], r["modality"], r["train"], r["val"], r["test"]]
        cells += [r["concepts"], licence.replace("|", "/"), terms]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsam3 datacard", description=__doc__.split("\n")[0])
    parser.add_argument("data_root", type=Path, help="shared data folder holding manifest.csv")
    args = parser.parse_args(argv)
    print(markdown(dataset_rows(args.data_root)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
