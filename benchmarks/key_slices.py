"""3D Dice of the compact backend on the shared volumes with key slices at several spacings,
against every slice encoded (the baseline, same run).

The first pass (every slice) encodes each slice into the feature cache under
``$MEDSAM3_CACHE``; the passes with key slices read their (fewer) encodings from it, so they
cost only the head, the decoder and the interpolation. Time them with
``benchmarks/segment.py --slices 100 --key-spacing MM`` instead. Never the test split.

Usage:
    PYTHONPATH=src python benchmarks/key_slices.py --data ../shared/data 2 3 4 [--out FILE]
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
    """Evaluate every key spacing and print the table against every slice."""
    import medsam3
    from medsam3.training.evaluate import eval_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spacings", nargs="+", type=float, help="key spacings in mm")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--splits", nargs="+", default=["val", "train"], choices=["val", "train"])
    ap.add_argument("--max-concepts", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None, help="write every pair's Dice as JSON")
    args = ap.parse_args()
    model = medsam3.load_model("compact", device="cpu", feature_cache=True)
    runs: dict[str, dict[str, float]] = {}
    for key in [0.0, *args.spacings]:
        model.key_spacing_mm = key
        start = time.time()
        runs[str(key)] = {}
        for split in args.splits:
            runs[str(key)] |= eval_volumes(model, args.data, args.max_concepts, split)
        print(f"key spacing {key} mm: {time.time() - start:.0f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    base = runs["0.0"]
    print(f"\n| key spacing | mean 3D Dice ({len(base)} pairs) | change | worst pair change |")
    print("|---|---|---|---|")
    for key, dice in runs.items():
        diffs = [dice[k] - base[k] for k in base]
        label = "every slice" if key == "0.0" else f"{key} mm"
        print(
            f"| {label} | {statistics.mean(dice.values()):.4f} | {statistics.mean(diffs):+.4f} "
            f"| {min(diffs):+.4f} |"
        )


if __name__ == "__main__":
    main()
