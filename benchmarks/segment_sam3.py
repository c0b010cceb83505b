"""Cost of the sam3 backend with random weights: 2D images, concept scaling, volumes.

Measures seconds per 2D image for 1 and 8 concepts (vision features are shared, so the ratio
should stay far below 8), and seconds per 100-slice volume in both volume modes, with the tiny
config and the full-size default config (random weights, nothing downloaded). On a CPU the
full-size volume timings run on a few slices and are extrapolated linearly to 100 slices (marked
"extrapolated"). With random weights the masks are meaningless: the mode comparison reports cost
and slice-to-slice consistency only.

On a GPU (``--device cuda``), ``--compare-cpu`` first runs the same seeded tiny model on the CPU
and on the device in float32 and reports how far their presences and masks differ: a check that
every tensor of the image, box and volume paths follows the model to the device.

Usage:
    python benchmarks/segment_sam3.py [--scales tiny,full] [--full-slices 3] [--out result.json]
    python benchmarks/segment_sam3.py --device cuda --dtype bfloat16 --full-slices 100 --compare-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDSAM3_SHARED_DATA", REPO.parent / "shared" / "data"))
CONCEPTS = ["polyp", "liver", "kidney", "brain tumor", "lung nodule", "heart", "spleen", "cyst"]


def load_image(path: Path | None = None) -> tuple[np.ndarray, str, str]:
    """A real 2D image: ``path`` (an RGB endoscopy PNG), else a Kvasir-SEG frame from
    ../shared/data, else pydicom's CT."""
    if path is not None:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB")), "endoscopy", path.name
    pngs = sorted((SHARED / "images" / "kvasir_seg").glob("*.png"))
    if pngs:
        from PIL import Image

        return np.asarray(Image.open(pngs[0]).convert("RGB")), "endoscopy", pngs[0].name
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu.astype(np.float32), "ct", "CT_small.dcm"


def load_volume(n: int = 100, path: Path | None = None) -> tuple[np.ndarray, str]:
    """n central axial slices (z, y, x) of a real MRI: ``path`` (a .npy array), else BraTS FLAIR,
    else nilearn's MNI152."""
    flair = SHARED / "volumes" / "brats2015" / "brats_2013_pat0005" / "flair.nii.gz"
    if path is not None:
        vol, name = np.load(path), path.name
    elif flair.is_file():
        import SimpleITK as sitk

        vol, name = sitk.GetArrayFromImage(sitk.ReadImage(str(flair))), "BraTS flair"
    else:
        from nilearn.datasets import load_mni152_template

        img = load_mni152_template(resolution=1)
        vol, name = np.transpose(np.asarray(img.get_fdata(), np.float32), (2, 1, 0)), "MNI152"
    start = max(0, (vol.shape[0] - n) // 2)
    return np.ascontiguousarray(vol[start : start + n], np.float32), name


def timed(fn, reps: int = 1, label: str = "") -> tuple[float, object]:
    """Median seconds over reps calls and the last result (progress goes to stderr)."""
    import torch

    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(f"  {label}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    return float(np.median(times)), out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty (here, not medsam3.evaluate's: the GPU
    machine's image has no SimpleITK)."""
    a, b = a.astype(bool), b.astype(bool)
    denom = a.sum() + b.sum()
    return float(2 * (a & b).sum() / denom) if denom else 1.0


def consistency(mask: np.ndarray) -> dict:
    """Slice-to-slice Dice of a (z, y, x) mask and its coverage."""
    dices = [dice(a, b) for a, b in zip(mask[:-1], mask[1:], strict=True) if a.any() or b.any()]
    return {
        "adjacent_dice": round(float(np.mean(dices)), 4) if dices else None,
        "slices_with_mask": int(mask.any(axis=(1, 2)).sum()),
    }


def build(scale: str, device: str = "cpu", dtype: str = "float32"):
    """Seeded random model; thresholds of 0.2 (random weights score ~0.26) keep / track objects."""
    from medsam3.models.sam3 import build_random_sam3

    return build_random_sam3(
        scale, device=device, dtype=dtype, score_threshold=0.2, track_thresholds=(0.2, 0.2)
    )


def run_paths(seg, image, modality, volume) -> dict:
    """Presence and mask of each path (8 text prompts, a box prompt, both volume modes)."""
    out = {f"text:{c}": r for c, r in seg.segment(image, CONCEPTS, modality).items()}
    h, w = image.shape[:2]
    box = {"polyp": [(w // 4, h // 4, 3 * w // 4, 3 * h // 4)]}
    out["box:polyp"] = seg.segment(image, ["polyp"], modality, boxes=box)["polyp"]
    for mode in ("per_slice", "propagate"):
        seg.volume_mode = mode
        out[f"volume:{mode}"] = seg.segment(volume, ["brain tumor"], "mri", kind="volume")[
            "brain tumor"
        ]
    return out


def compare_cpu(device: str, image, modality, volume) -> dict:
    """The same seeded tiny float32 model on the CPU and on ``device``: how far results differ."""
    ref = run_paths(build("tiny"), image, modality, volume)
    dev = run_paths(build("tiny", device), image, modality, volume)
    dices = {k: round(dice(ref[k].mask, dev[k].mask), 4) for k in ref}
    return {
        "device": device,
        "max_presence_abs_diff": float(max(abs(ref[k].presence - dev[k].presence) for k in ref)),
        "min_mask_dice": min(dices.values()),
        "mask_dice": dices,
        "instances_cpu": {k: len(r.instances) for k, r in ref.items()},
        "instances_device": {k: len(r.instances) for k, r in dev.items()},
    }


def bench_scale(
    scale: str, image, modality, volume, n_slices: int, reps: int, device: str, dtype: str
) -> dict:
    """All measurements for one model scale."""
    import torch

    t_build, seg = timed(lambda: build(scale, device, dtype), label=f"build {scale}")
    seg.video_model.max_num_objects = 4
    params = sum(p.numel() for p in seg.video_model.parameters())
    seg.segment(image, ["warm up"], modality)
    t1, _ = timed(lambda: seg.segment(image, CONCEPTS[:1], modality), reps, "1 concept")
    t8, _ = timed(lambda: seg.segment(image, CONCEPTS, modality), reps, "8 concepts")
    row = {"scale": scale, "device": device, "dtype": dtype}
    row.update(params_M=round(params / 1e6, 1), build_s=round(t_build, 1))
    row.update(image_1_concept_s=round(t1, 3), image_8_concepts_s=round(t8, 3))
    row["ratio_8_to_1"] = round(t8 / t1, 2)
    vol = volume[:n_slices]
    masks = {}
    for mode in ("per_slice", "propagate"):
        seg.volume_mode = mode
        run = lambda: seg.segment(vol, ["brain tumor"], "mri", kind="volume")  # noqa: E731
        secs, out = timed(run, label=f"{n_slices} slices {mode}")
        res = out["brain tumor"]
        masks[mode] = res.mask
        key = f"volume100_{mode}_s"
        row[key] = round(secs * 100 / n_slices, 2)
        if mode == "propagate":  # the scan covers min(scan_slices, n) slices, not all of them
            scan_s, n_scan = res.extra["scan_s"], len(res.extra["scan_scores"])
            per_frame = (secs - scan_s) / n_slices
            row[key] = round(per_frame * 100 + scan_s / n_scan * min(seg.scan_slices, 100), 2)
            row["propagate_scan_s"] = round(scan_s, 2)
        row[f"{mode}_instances"] = len(res.instances)
        row[f"{mode}_consistency"] = consistency(res.mask)
    row["mode_agreement_dice"] = round(dice(masks["per_slice"], masks["propagate"]), 4)
    row["ratio_propagate_to_per_slice"] = round(
        row["volume100_propagate_s"] / row["volume100_per_slice_s"], 2
    )
    row["volume_slices_run"] = n_slices
    row["volume_extrapolated"] = n_slices != 100
    if torch.cuda.is_available() and device != "cpu":
        row["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON row per scale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="tiny,full")
    parser.add_argument("--full-slices", type=int, default=3, help="slices run at full size")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (tiny; full uses 1)")
    parser.add_argument("--device", default="cpu", help='torch device, e.g. "cuda"')
    parser.add_argument("--dtype", default="float32", help="weights dtype, e.g. bfloat16")
    parser.add_argument("--image", type=Path, default=None, help="RGB PNG to use instead")
    parser.add_argument("--volume", type=Path, default=None, help="(z, y, x) .npy to use instead")
    parser.add_argument("--compare-cpu", action="store_true", help="tiny model: CPU vs --device")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    image, modality, image_name = load_image(args.image)
    volume, volume_name = load_volume(100, args.volume)
    print(f"image {image_name} {image.shape} ({modality}); volume {volume_name} {volume.shape}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    if args.device != "cpu":
        print(f"device {torch.cuda.get_device_name(args.device)}")
    rows = []
    if args.compare_cpu and args.device != "cpu":
        rows.append({"compare_cpu": compare_cpu(args.device, image, modality, volume[:12])})
        print(json.dumps(rows[-1]), flush=True)
    for scale in args.scales.split(","):
        full = scale == "full"
        n = min(args.full_slices, volume.shape[0]) if full else volume.shape[0]
        reps = 1 if full and args.device == "cpu" else args.reps
        row = bench_scale(scale, image, modality, volume, n, reps, args.device, args.dtype)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
