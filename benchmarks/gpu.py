"""GPU throughput of both backends: images/s, slices/s, pipeline vs bare model, memory, agreement.

Usage (one short run on a GPU machine; minutes at full size):
    python benchmarks/gpu.py --device cuda --scale full --dtype bfloat16
and on any CPU, in seconds (what the test suite runs):
    python benchmarks/gpu.py --device cpu --scale tiny

For each backend it measures on synthetic inputs (random weights for sam3: cost only):
- images/s: 2D images through ``model.segment`` (pre-processing, encoder, decoder, masks on
  the host), and for sam3 the bare forward (batched vision encoder + detector, no
  post-processing) on the same images;
- slices/s: a volume through ``model.segment`` (sam3: per_slice and propagate), and for sam3
  the bare forward over its slices;
- the pipeline on a shard: studies ingested into Zarr stores, then ``pipeline.infer
  .segment_studies`` (the shard loop: each store read ahead while the study before is
  segmented, then segment, labels, exports, tables), against
  ``model.segment`` on the same arrays in memory (goal: ratio >= 0.8);
- peak device memory of each part (CUDA only);
- CPU/GPU agreement (CUDA only): the same seeded tiny sam3 and the compact backend on the CPU
  and on the device, presence difference and mask Dice; the compact backend also with
  ``precision="bfloat16"`` on the device (whether mixed precision stays within the bounds).
A backend the device refuses (the compact backend before it runs on CUDA) is skipped with
the reason. The output ends with a Markdown table for docs/scaling.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

import medsam3
from medsam3.io.image import MedImage
from medsam3.io.zarr_store import write_study
from medsam3.models.sam3 import build_random_sam3

SIZES = {  # images, image side, slices, slice side, studies in the shard
    "tiny": dict(images=1, side=96, slices=2, slice_side=64, studies=2),
    "full": dict(images=32, side=512, slices=100, slice_side=240, studies=4),
}
CONCEPTS = ["liver"]


class Rows(list):
    """Measured (backend, measurement, value) rows, each printed as it comes (a run cut short
    by its time limit still shows what it measured)."""

    def append(self, row: tuple[str, str, object]) -> None:
        super().append(row)
        print(f"measured: {row}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args) -> tuple[float, object]:
    """(wall seconds, result) of fn(*args), with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    sync(device)
    return time.perf_counter() - t0, out


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated device memory since the last reset, GiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def inputs(size: dict, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Smooth synthetic RGB images (uint8) and an MR-like float32 volume (z, y, x)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size["side"], : size["side"]] / size["side"]
    images = []
    for i in range(size["images"]):
        blob = np.exp(-((xx - 0.3 - 0.01 * i) ** 2 + (yy - 0.5) ** 2) / 0.02)
        rgb = np.stack([blob, 0.5 * blob + 0.2 * xx, yy], -1) * 200 + rng.normal(0, 5, (1, 1, 3))
        images.append(np.clip(rgb, 0, 255).astype(np.uint8))
    n, s = size["slices"], size["slice_side"]
    zz, yy, xx = np.mgrid[:n, :s, :s] / np.array([max(n, 1), s, s]).reshape(3, 1, 1, 1)
    volume = 800 * np.exp(-((zz - 0.5) ** 2 + (yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.05)
    return images, (volume + rng.normal(0, 10, volume.shape)).astype(np.float32)


def bare_sam3(seg, planes: list[np.ndarray]) -> None:
    """Batched vision encoder + detector on each plane (no pre-/post-processing on the host)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    feats, mask = seg.encode_text(CONCEPTS)
    with torch.inference_mode():
        for _, vision in seg.encoded(planes):
            seg.detector(
                vision_embeds=vision,
                text_embeds=BaseModelOutputWithPooling(pooler_output=feats),
                attention_mask=mask,
            )


def volume_planes(volume: np.ndarray) -> list[np.ndarray]:
    """The volume's slices as the (y, x, 3) uint8 planes both backends encode."""
    from medsam3.models.preprocess import to_uint8_rgb, volume_intensity_range

    span = volume_intensity_range(volume)
    return [to_uint8_rgb(p, "mri", CONCEPTS[0], span) for p in volume]


def compact_frames(model, planes: list[np.ndarray]) -> torch.Tensor:
    """The planes as prepared (B, 3, 256, 256) frames on the model's device."""
    from medsam3.models.litemedsam import prepare_image

    return torch.cat([prepare_image(p).tensor for p in planes]).to(model.device)


def bare_compact_encoder(model, frames: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """LiteMedSAM's image encoder alone over prepared frames, in the model's encode batches
    (no head, no host copies); bf16: under CUDA autocast. Returns the last batch's output."""
    batch = model.encode_batch or len(frames)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        for start in range(0, len(frames), batch):
            out = model.sam.encode_frames(frames[start : start + batch])
    return out.float()


def bf16_rows(model, device, frames: torch.Tensor, rows: list) -> None:
    """Compact encoder under bf16 autocast: slices/s and its relative error against float32."""
    n = len(frames)
    t, out = timed(device, bare_compact_encoder, model, frames, True)
    rows.append(("compact", "slices/s, bare encoder forward, bf16 autocast", n / t))
    ref = bare_compact_encoder(model, frames)
    rel = float((out - ref).norm() / ref.norm())
    rows.append(("compact", "bf16 vs float32 embedding, relative error", rel))


def shard_pipeline(model, images, volume, studies: int) -> tuple[float, float]:
    """(pipeline seconds over a shard via segment_studies, model.segment seconds, same arrays)."""
    from medsam3.pipeline.cohort import Study
    from medsam3.pipeline.infer import segment_studies
    from medsam3.pipeline.settings import ModelSettings, SegmentSettings
    from medsam3.pipeline.status import JobStatus, StudyStatus, write_status

    with tempfile.TemporaryDirectory() as tmp:
        model_settings = ModelSettings(model.name, "", "", "auto")
        settings = SegmentSettings(tmp, model_settings, ("nifti",), {}, False)
        arrays = [(images[i % len(images)], "image") if i % 2 else (volume, "volume")
                  for i in range(studies)]  # fmt: skip
        shard = []
        for i, (array, kind) in enumerate(arrays):
            sid = f"s{i:03d}"
            spacing = (1.0, 1.0) if kind == "image" else (1.0, 1.0, 2.0)
            direction = tuple(np.eye(len(spacing)).ravel())
            image = MedImage(array, kind, spacing, (0.0,) * len(spacing), direction,
                             modality="endoscopy" if kind == "image" else "mri")  # fmt: skip
            write_study(settings.layout.store(sid), image, attrs={"study_id": sid})
            record = StudyStatus(sid, "ingest", "ok")
            write_status(settings.layout.status("ingest", sid), JobStatus("ingest", sid, [record]))
            shard.append(Study(sid, "", image.modality, tuple(CONCEPTS)))
        t0 = time.perf_counter()
        for status in segment_studies("bench", shard, model, settings):
            assert status.status == "ok", status
        pipeline_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for array, kind in arrays:
        modality = "endoscopy" if kind == "image" else "mri"
        model.segment(array, CONCEPTS, modality=modality, kind=kind)
    return pipeline_s, time.perf_counter() - t0


def measure(name: str, model, device, images, volume, size, rows: list) -> None:
    """Throughput rows of one backend (sam3 adds its bare forward and both volume modes)."""
    n_img, n_sl = len(images), volume.shape[0]
    reset_peak(device)
    model.segment(images[0], CONCEPTS, modality="endoscopy")  # warm-up (kernels, caches)
    t, _ = timed(device, lambda: [model.segment(im, CONCEPTS, modality="endoscopy")
                                  for im in images])  # fmt: skip
    rows.append((name, "images/s, model.segment", n_img / t))
    if name == "sam3":
        t, _ = timed(device, bare_sam3, model, images)
        rows.append((name, "images/s, bare forward (batched)", n_img / t))
    modes = ("per_slice", "propagate") if name == "sam3" else (None,)
    for mode in modes:
        if mode:
            model.volume_mode = mode
        t, _ = timed(device, model.segment, volume, CONCEPTS, "mri", None, None, None, "volume")
        rows.append((name, f"slices/s, model.segment{f' {mode}' if mode else ''}", n_sl / t))
    planes = volume_planes(volume)
    if name == "sam3":
        t, _ = timed(device, bare_sam3, model, planes)
        rows.append((name, "slices/s, bare forward (batched)", n_sl / t))
        model.volume_mode = "per_slice"
    else:
        t, _ = timed(device, model.encode_planes, planes, "mri")
        rows.append((name, "slices/s encoded (encode_planes: encoder + head features)", n_sl / t))
        frames = compact_frames(model, planes)
        t, _ = timed(device, bare_compact_encoder, model, frames)
        rows.append((name, "slices/s, bare encoder forward (batched)", n_sl / t))
        if device.type == "cuda":
            bf16_rows(model, device, frames, rows)
    pipe, bare = shard_pipeline(model, images, volume, size["studies"])
    label = f"shard of {size['studies']}: pipeline throughput / model.segment"
    rows.append((name, label, bare / pipe))
    if (peak := peak_gib(device)) is not None:
        rows.append((name, "peak GPU memory, GiB", peak))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def agreement(device, images, volume, rows: list) -> None:
    """Max presence difference and min mask Dice, CPU vs device, for each backend."""
    pairs = {"sam3 (tiny, float32)": [
        build_random_sam3("tiny", seed=0, device=d, score_threshold=0.2, volume_mode="per_slice")
        for d in ("cpu", device)]}  # fmt: skip
    try:
        cpu = medsam3.load_model("compact", device="cpu")
        pairs["compact"] = [cpu, medsam3.load_model("compact", device=device)]
        half = medsam3.load_model("compact", device=device, precision="bfloat16")
        pairs["compact, device in precision bfloat16"] = [cpu, half]
    except Exception as exc:  # noqa: BLE001 - the reason is reported, the run goes on
        rows.append(("compact", "CPU/GPU agreement", f"skipped: {exc}"))
    for name, (cpu, dev) in pairs.items():
        diffs, dices = [], []
        cases = [(images[0], "image", "endoscopy"), (volume[:8], "volume", "mri")]
        for array, kind, modality in cases:
            a = cpu.segment(array, CONCEPTS, modality=modality, kind=kind)[CONCEPTS[0]]
            b = dev.segment(array, CONCEPTS, modality=modality, kind=kind)[CONCEPTS[0]]
            diffs.append(abs(a.presence - b.presence))
            dices.append(dice(a.mask.astype(bool), b.mask.astype(bool)))
        rows.append((name, "CPU/GPU max presence difference", max(diffs)))
        rows.append((name, "CPU/GPU min mask Dice", min(dices)))


def main() -> None:
    """Parse arguments, run both backends and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=sorted(SIZES), default="full")
    parser.add_argument("--dtype", default=None, help="sam3 weights (default bfloat16 on CUDA)")
    parser.add_argument("--backends", default="sam3,compact")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    size = SIZES[args.scale]
    images, volume = inputs(size)
    rows = Rows()
    if "sam3" in args.backends:
        seg = build_random_sam3(args.scale, seed=0, dtype=dtype, device=str(device),
                                score_threshold=0.5, volume_mode="per_slice")  # fmt: skip
        rows.append(("sam3", f"{args.scale}, {dtype}: encode batch", seg.encode_batch or "auto"))
        measure("sam3", seg, device, images, volume, size, rows)
        rows.append(("sam3", "encode batch used", seg.encode_batch))
        del seg
    if "compact" in args.backends:
        try:
            compact = medsam3.load_model("compact", device=str(device))
        except Exception as exc:  # noqa: BLE001 - e.g. the backend refuses the device
            rows.append(("compact", "all", f"skipped: device {device} refused ({exc})"))
        else:
            measure("compact", compact, device, images, volume, size, rows)
    if device.type == "cuda":
        agreement(str(device), images, volume, rows)
    print(f"\n{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, {args.scale}, {size}")  # fmt: skip
    print("| backend | measurement | value |\n|---|---|---|")
    for backend, what, value in rows:
        shown = f"{value:.3g}" if isinstance(value, float) else value
        print(f"| {backend} | {what} | {shown} |")


if __name__ == "__main__":
    main()
