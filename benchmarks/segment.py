"""CPU cost of segmentation: seconds per 2D image for 1 and 8 concepts, and per 100-slice volume
(1 concept, and 5 brain concepts).

The compact backend encodes an image once and decodes every concept from the shared features,
so 8 concepts should cost at most ~2x one concept (issue 15 asks <= 1.3x). The 2D timings are
medians of 9 interleaved calls; the volume timings single calls. Volume cost is measured on
``--slices`` slices and extrapolated linearly to 100 slices unless ``--slices 100`` (marked
"extrapolated"). The sam3 backend is timed with random weights via
``medsam3.models.sam3.build_random_sam3`` when that function exists (skipped with a message
otherwise).

With ``--baseline-checkpoint HEAD`` the compact backend is also timed with another concept head
(e.g. the previously shipped one: ``git show <commit>:src/medsam3/weights/compact_head.safetensors``
and its ``.json``) in the same run, and the ratios current / baseline are printed.

With ``--key-spacing MM`` the 5-concept volume is also timed encoding key slices every MM mm
and interpolating between (compact; needs the real slice spacing, so use ``--slices 100``).

With ``--precision bfloat16`` the compact backend is also timed with LiteMedSAM under bfloat16
autocast (``model.precision``) in the same run, and the ratios bfloat16 / float32 are printed.

Usage:
    python benchmarks/segment.py [--backends compact,sam3] [--scale tiny] [--slices 4]
                                 [--refine-baseline] [--baseline-checkpoint HEAD]
                                 [--key-spacing MM] [--precision bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONCEPTS = ["polyp", "liver", "kidney", "brain tumor", "lung nodule", "heart", "spleen", "cyst"]
BRAIN_CONCEPTS = ["brain", "hippocampus", "thalamus", "cerebrospinal fluid", "brain tumor"]


def real_image() -> np.ndarray:
    """pydicom's CT_small.dcm in HU (128x128, ships with pydicom)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def real_volume(n: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """n axial slices of the nilearn MNI152 template (1 mm, ships with nilearn), evenly spread
    over the head: (z, y, x) float32 and its (x, y, z) spacing in mm (100 slices: 1.6 mm)."""
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template().get_fdata().astype(np.float32)
    zs = np.linspace(20, vol.shape[2] - 20, n).astype(int)
    step = float(zs[-1] - zs[0]) / max(1, n - 1)
    return np.stack([np.rot90(vol[:, :, z]) for z in zs]), (1.0, 1.0, step)


def timed(fn, repeats: int = 2) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed_interleaved(fns: list, repeats: int = 9) -> list[float]:
    """Median wall time of each function, calls interleaved (f1, f2, f3, f1, ...): a 2D call
    takes under a second, and the machine's speed drifts more than that between blocks of
    repeats, so ratios of separately timed blocks are noise."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def bench(
    model, name: str, slices: int, refine_baseline: bool = False, key_spacing: float | None = None
) -> dict:
    """Time one backend: 1 vs 8 concepts on a 2D image (MRI modality: one encoding), volume.

    The volume timings encode every slice (no spacing given). With ``refine_baseline``
    (compact), the volume is also timed with every mask component refined by the decoder
    (``refine_min_share = 0``, the behaviour before it existed). With ``key_spacing`` (compact),
    the 5-concept volume is also timed with its spacing and key slices every that many mm.
    """
    img = real_image()
    model.segment(img, CONCEPTS[:1], modality="mri")  # warm-up (text encoder, threads)
    one, unnamed, eight = timed_interleaved(
        [
            lambda: model.segment(img, CONCEPTS[:1], modality="mri"),
            lambda: model.segment(img, CONCEPTS[:1]),  # modality recognised, if it can
            lambda: model.segment(img, CONCEPTS, modality="mri"),
        ]
    )
    vol, spacing = real_volume(slices)
    t_vol = timed(lambda: model.segment(vol, ["brain"], modality="mri", kind="volume"), 1)
    t_vol5 = timed(lambda: model.segment(vol, BRAIN_CONCEPTS, modality="mri", kind="volume"), 1)
    out = {
        "backend": name,
        "s_per_image_1_concept": round(one, 3),
        "s_per_image_1_concept_no_modality": round(unnamed, 3),
        "s_per_image_8_concepts": round(eight, 3),
        "ratio_8_to_1": round(eight / one, 3),
        "s_per_100_slice_volume": round(t_vol * 100 / slices, 1),
        "s_per_100_slice_volume_5_concepts": round(t_vol5 * 100 / slices, 1),
        "volume_extrapolated": slices != 100,
    }
    if refine_baseline and hasattr(model, "refine_min_share"):
        saved, model.refine_min_share = model.refine_min_share, 0.0
        t_all = timed(lambda: model.segment(vol, ["brain"], modality="mri", kind="volume"), 1)
        model.refine_min_share = saved
        out["s_per_100_slice_volume_refine_all"] = round(t_all * 100 / slices, 1)
        out["volume_speedup_vs_refine_all"] = round(t_all / t_vol, 2)
    if key_spacing and hasattr(model, "key_spacing_mm"):
        saved, model.key_spacing_mm = model.key_spacing_mm, key_spacing
        t_key = timed(
            lambda: model.segment(vol, BRAIN_CONCEPTS, "mri", spacing=spacing, kind="volume"), 1
        )
        model.key_spacing_mm = saved
        out["key_spacing_mm"], out["slice_spacing_mm"] = key_spacing, round(spacing[2], 2)
        out["s_per_100_slice_volume_5_concepts_keyed"] = round(t_key * 100 / slices, 1)
        out["keyed_speedup"] = round(t_vol5 / t_key, 2)
    print(json.dumps(out))
    return out


def print_ratios(current: dict, baseline: dict) -> None:
    """Current / baseline for every timing both runs have."""
    for key, value in current.items():
        if key.startswith("s_per") and key in baseline:
            print(f"  {key}: {value} s vs {baseline[key]} s (x{value / baseline[key]:.2f})")


def main() -> None:
    """Parse arguments, run the benchmarks, print and optionally save JSON."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="compact,sam3")
    ap.add_argument("--scale", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--refine-baseline",
        action="store_true",
        help="compact: also time the volume refining every mask component (same run)",
    )
    ap.add_argument(
        "--baseline-checkpoint",
        default=None,
        help="compact: also time this concept head (same run) and print current / baseline",
    )
    ap.add_argument(
        "--key-spacing",
        type=float,
        default=None,
        help="compact: also time the 5-concept volume encoded every MM mm (use --slices 100)",
    )
    ap.add_argument(
        "--precision",
        choices=["bfloat16"],
        default=None,
        help="compact: also time LiteMedSAM under this autocast precision (same run)",
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = []
    for backend in args.backends.split(","):
        if backend == "compact":
            from medsam3 import load_model

            model = load_model("compact")
            full = bench(model, "compact", args.slices, args.refine_baseline, args.key_spacing)
            results.append(full)
            if args.precision:
                half = load_model("compact", precision=args.precision)
                name = f"compact-{args.precision}"
                results.append(bench(half, name, args.slices, False, args.key_spacing))
                print_ratios(results[-1], full)
            if args.baseline_checkpoint:
                base = load_model("compact", checkpoint=args.baseline_checkpoint)
                results.append(bench(base, "compact-baseline", args.slices))
                print_ratios(full, results[-1])
        elif backend == "sam3":
            try:
                from medsam3.models.sam3 import build_random_sam3
            except ImportError:
                print("sam3: medsam3.models.sam3.build_random_sam3 not found; skipped")
                continue
            model = build_random_sam3(scale=args.scale)
            results.append(bench(model, f"sam3-random-{args.scale}", args.slices))
    for r in results:
        print(
            f"{r['backend']}: 1 concept {r['s_per_image_1_concept']} s, 8 concepts "
            f"{r['s_per_image_8_concepts']} s (ratio {r['ratio_8_to_1']}, goal <= 1.3); "
            f"100-slice volume {r['s_per_100_slice_volume']} s, with 5 concepts "
            f"{r['s_per_100_slice_volume_5_concepts']} s (goal < 60)"
            + (" (extrapolated)" if r["volume_extrapolated"] else "")
        )
        if "keyed_speedup" in r:
            print(
                f"  key slices every {r['key_spacing_mm']} mm ({r['slice_spacing_mm']} mm "
                f"slices): {r['s_per_100_slice_volume_5_concepts_keyed']} s per 100-slice "
                f"volume with 5 concepts; speed-up {r['keyed_speedup']}x (same run)"
            )
        if "volume_speedup_vs_refine_all" in r:
            print(
                f"  refining every component: {r['s_per_100_slice_volume_refine_all']} s per "
                f"100-slice volume; speed-up {r['volume_speedup_vs_refine_all']}x"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
