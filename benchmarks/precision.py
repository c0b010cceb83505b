"""3D Dice of the compact backend on the shared volumes with LiteMedSAM in bfloat16 autocast
(``model.precision: bfloat16``) against float32 (the baseline, same run), at the default key
spacing. Never the test split.

The float32 pass reads its encodings from the feature cache under ``$MEDSAM3_CACHE`` (filled
on first use, as ``benchmarks/key_slices.py`` does); the bfloat16 pass encodes every plane
afresh. Time both with ``benchmarks/segment.py --slices 100 --key-spacing 3 --precision
bfloat16`` instead.

Usage:
    PYTHONPATH=src python benchmarks/precision.py --data ../shared/data [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Evaluate both precisions and print the comparison."""
    import torch

    import medsam3
    from medsam3.training.evaluate import eval_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--splits", nargs="+", default=["val", "train"], choices=["val", "train"])
    ap.add_argument("--max-concepts", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None, help="write every pair's Dice as JSON")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = {
        "float32": medsam3.load_model("compact", device="cpu", feature_cache=True),
        "bfloat16": medsam3.load_model("compact", device="cpu", precision="bfloat16"),
    }
    runs: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        start, runs[name] = time.time(), {}
        for split in args.splits:
            runs[name] |= eval_volumes(model, args.data, args.max_concepts, split)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    base = runs["float32"]
    diffs = {k: runs["bfloat16"][k] - base[k] for k in base}
    worst = min(diffs, key=diffs.get)
    print(f"\n| precision | mean 3D Dice ({len(base)} pairs) | change | worst pair change |")
    print("|---|---|---|---|")
    print(f"| float32 | {statistics.mean(base.values()):.4f} | | |")
    print(
        f"| bfloat16 | {statistics.mean(runs['bfloat16'].values()):.4f} "
        f"| {statistics.mean(diffs.values()):+.4f} | {diffs[worst]:+.4f} ({worst}) |"
    )


if __name__ == "__main__":
    main()
