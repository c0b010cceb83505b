"""Volumes (z, y, x) and videos (t, y, x[, c]) for the sam3 backend.

Two modes:

- ``propagate`` (default when the checkpoint has a tracker): Sam3VideoModel's detect-and-track
  loop. Volumes start at the slice with the strongest detection (found by scanning
  ``scan_slices`` evenly spaced slices with the detector) and are tracked towards both ends;
  videos start at frame 0 and run forward. Instances keep one identity across slices/frames.
- ``per_slice``: every slice is detected independently with the image detector (one vision
  encoding per slice, shared by all concepts); 3D instances are the 26-connected components of
  the stacked masks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from medsam3.models.base import ConceptResult, Instance, mask_box
from medsam3.models.preprocess import group_by_ct_window, to_uint8_rgb, volume_intensity_range

if TYPE_CHECKING:  # annotations only: sam3.py imports this module to segment stacks
    from medsam3.models.sam3 import Sam3Segmenter

log = logging.getLogger(__name__)
# transformers' video classes are imported where a video session starts (2.4 s to import the
# Sam3 classes); per-slice mode never needs them.


def segment_sam3_stack(
    seg: Sam3Segmenter, array: np.ndarray, concepts: list[str], modality: str | None, kind: str
) -> dict[str, ConceptResult]:
    """Segment concepts in a volume or video with the segmenter's volume mode.

    Args:
        seg: the Sam3Segmenter.
        array: (z, y, x) volume or (t, y, x[, c]) video, checked by medsam3.models.inputs.
        concepts: checked phrases.
        modality: drives intensity pre-processing (CT windows per concept, MRI percentiles).
        kind: "volume" or "video".

    Returns:
        Mapping phrase -> ConceptResult with (z, y, x) / (t, y, x) masks.
    """
    size = tuple(array.shape[1:3])
    gray_float = array.ndim == 3 and array.dtype != np.uint8
    ct = (modality or "").lower() == "ct"
    intensity_range = volume_intensity_range(array) if gray_float and not ct else None
    mode = seg.volume_mode if kind == "volume" else "propagate"
    note = None
    if mode == "propagate" and seg.video_model is None:
        mode, note = "per_slice", "checkpoint has no tracker (model_type sam3); ran per_slice"
    results: dict[str, ConceptResult] = {}
    for key, group in group_by_ct_window(concepts, modality).items():
        t0 = time.perf_counter()
        planes = [to_uint8_rgb(p, modality, group[0], intensity_range) for p in array]
        if mode == "per_slice":
            found = per_slice(seg, planes, group, size)
        else:
            found = propagate(seg, planes, group, size, start=None if kind == "volume" else 0)
        seconds = time.perf_counter() - t0
        for res in found.values():
            res.extra.update(mode=mode, ct_window=list(key) if key else None, seconds=seconds)
            if note:
                res.extra["note"] = note
        results.update(found)
    return {c: results[c] for c in concepts}


def per_slice(seg: Sam3Segmenter, planes: list[np.ndarray], concepts: list[str], size) -> dict:
    """Independent detection on every slice; 3D instances from connected components.

    Args:
        seg: the segmenter.
        planes: n (y, x, 3) uint8 slices.
        concepts: phrases sharing this pre-processing.
        size: (y, x).

    Returns:
        Mapping phrase -> ConceptResult.
    """
    n, text = len(planes), seg.encode_text(concepts)
    union = {c: np.zeros((n, *size), np.uint8) for c in concepts}
    presence = {c: np.zeros(n, np.float32) for c in concepts}
    found2d: dict[str, list] = {c: [] for c in concepts}
    for z, vision in seg.encoded(planes):
        dets = seg.detect(vision, text, size)
        for concept, det in zip(concepts, dets, strict=True):
            presence[concept][z] = det.presence
            for mask, score in zip(det.masks, det.scores, strict=True):
                if mask.any():
                    union[concept][z] |= mask.astype(np.uint8)
                    found2d[concept].append((z, float(score), mask))
    out = {}
    for concept in concepts:
        instances = components_3d(union[concept], found2d[concept])
        extra = {"slice_presence": presence[concept].round(4).tolist()}
        out[concept] = ConceptResult(
            concept, union[concept], float(presence[concept].max()), instances, [], extra
        )
    return out


def components_3d(union: np.ndarray, found2d: list) -> list[Instance]:
    """26-connected components of a stacked mask, scored by the best 2D detection inside.

    Args:
        union: (z, y, x) uint8 mask.
        found2d: (z, score, (y, x) bool mask) per 2D detection.

    Returns:
        Instances sorted by decreasing score.
    """
    labels, count = ndimage.label(union, structure=np.ones((3, 3, 3), bool))
    best = np.zeros(count + 1, np.float32)
    for z, score, mask in found2d:
        for lab in np.unique(labels[z][mask]):
            best[lab] = max(best[lab], score)
    instances = []
    for lab in range(1, count + 1):
        mask = labels == lab
        instances.append(Instance(mask=mask, box=mask_box(mask), score=float(best[lab])))
    return sorted(instances, key=lambda inst: -inst.score)


def strongest_slice(seg: Sam3Segmenter, planes, concepts, size, text) -> tuple[int, dict]:
    """Scan evenly spaced slices with the detector; return the one with the best detection.

    Args:
        seg: the segmenter (``seg.scan_slices`` slices are scanned; <= 0: middle slice).
        planes: n (y, x, 3) uint8 slices.
        concepts: phrases; text: their encoded features.
        size: (y, x).

    Returns:
        (slice index, {slice index: best score}) - best score over concepts, presence as tie-break.
    """
    n = len(planes)
    if seg.scan_slices <= 0:
        return n // 2, {}
    scanned = np.unique(np.linspace(0, n - 1, min(n, seg.scan_slices)).round().astype(int))
    strength = {}
    for i, vision in seg.encoded([planes[z] for z in scanned]):
        z = scanned[i]
        dets = seg.detect(vision, text, size)
        best = max(float(d.scores.max()) if len(d.scores) else 0.0 for d in dets)
        strength[int(z)] = (best, max(d.presence for d in dets))
    start = max(strength, key=lambda z: strength[z])
    return start, {z: round(s[0], 4) for z, s in strength.items()}


def video_processor(seg: Sam3Segmenter):
    """Sam3VideoProcessor sharing the segmenter's image processor and tokenizer (cached)."""
    if getattr(seg, "_video_processor", None) is None:
        from transformers import Sam3VideoProcessor
        from transformers.models.sam2_video.video_processing_sam2_video import (
            Sam2VideoVideoProcessor,
        )

        size = {"height": seg.image_size, "width": seg.image_size}
        seg._video_processor = Sam3VideoProcessor(
            image_processor=seg.processor.image_processor,
            video_processor=Sam2VideoVideoProcessor(size=size),
            tokenizer=seg.processor.tokenizer,
        )
    return seg._video_processor


@torch.inference_mode()
def propagate(seg: Sam3Segmenter, planes, concepts, size, start: int | None) -> dict:
    """Sam3VideoModel detect-and-track over the slices, both ways from ``start``.

    Args:
        seg: segmenter with a video model.
        planes: n (y, x, 3) uint8 slices / frames.
        concepts: phrases (one text prompt each, tracked in one session).
        size: (y, x).
        start: first slice; None picks the strongest slice (:func:`strongest_slice`).

    Returns:
        Mapping phrase -> ConceptResult; one Instance per tracked object.
    """
    n, scan, t0 = len(planes), {}, time.perf_counter()
    if start is None:
        start, scan = strongest_slice(seg, planes, concepts, size, seg.encode_text(concepts))
    scan_s = time.perf_counter() - t0
    pixels = torch.cat([seg.pixel_values(planes[i : i + 16]) for i in range(0, n, 16)])
    session = new_session(seg, pixels, size)
    vp = video_processor(seg)
    vp.add_text_prompt(session, concepts)
    trace: list[float] = []
    hook = seg.video_model.detector_model.register_forward_hook(
        lambda _m, _i, out: trace.extend(out.presence_logits.float().sigmoid()[:, 0].tolist())
    )
    tracks: dict[int, dict] = {}
    try:
        for reverse in (False, True):
            if reverse and start == 0:
                break
            for out in seg.video_model.propagate_in_video_iterator(
                session, start_frame_idx=start, reverse=reverse
            ):
                collect(tracks, vp.postprocess_outputs(session, out), out.frame_idx)
    finally:
        hook.remove()
    order = list(range(start, n)) + list(range(start - 1, -1, -1))
    presence = presence_per_slice(trace, order, len(concepts), n)
    results = {}
    for i, concept in enumerate(concepts):
        results[concept] = tracked_result(concept, i, tracks, presence, (n, *size), start, scan)
        results[concept].extra["scan_s"] = round(scan_s, 3)
    return results


def new_session(seg: Sam3Segmenter, pixels: torch.Tensor, size):
    """A Sam3VideoInferenceSession over pre-processed frames (n, 3, S, S) of (y, x) size."""
    from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

    return Sam3VideoInferenceSession(
        video=pixels,
        video_height=int(size[0]),
        video_width=int(size[1]),
        inference_device=seg.device,
        inference_state_device=seg.device,
        video_storage_device=seg.device,
        dtype=seg.dtype,
    )


def collect(tracks: dict, frame: dict, z: int) -> None:
    """Store one frame's post-processed objects: tracks[obj_id] = {prompt, score, masks{z}}."""
    prompt_of = {o: p for p, ids in frame["prompt_to_obj_ids"].items() for o in ids}
    masks = frame["masks"].cpu().numpy()
    for k, obj_id in enumerate(frame["object_ids"].tolist()):
        if not masks[k].any():
            continue
        track = tracks.setdefault(obj_id, {"prompt": prompt_of[obj_id], "score": 0.0, "z": {}})
        track["score"] = max(track["score"], float(frame["scores"][k]))
        track["z"][z] = masks[k]


def presence_per_slice(trace: list[float], order: list[int], n_prompts: int, n: int):
    """Per-slice presence (n_prompts, n) from the detector hook trace; None if it is off."""
    if len(trace) != len(order) * n_prompts:
        log.warning("presence trace has %d values, expected %d", len(trace), len(order) * n_prompts)
        return None
    out = np.zeros((n_prompts, n), np.float32)
    values = np.asarray(trace, np.float32).reshape(len(order), n_prompts)
    out[:, order] = values.T
    return out


def tracked_result(concept, index, tracks, presence, shape, start, scan) -> ConceptResult:
    """ConceptResult of one prompt from its tracks: 3D instance masks, union, presence."""
    union = np.zeros(shape, np.uint8)
    instances = []
    for track in tracks.values():
        if track["prompt"] != concept:
            continue
        mask = np.zeros(shape, bool)
        for z, plane in track["z"].items():
            mask[z] = plane
        union |= mask.astype(np.uint8)
        instances.append(Instance(mask=mask, box=mask_box(mask), score=track["score"]))
    instances.sort(key=lambda inst: -inst.score)
    extra = {"start_slice": int(start), "scan_scores": scan, "n_tracked": len(instances)}
    if presence is not None:
        extra["slice_presence"] = presence[index].round(4).tolist()
        value = float(presence[index].max())
    else:
        value = max((inst.score for inst in instances), default=0.0)
    return ConceptResult(concept, union, value, instances, [], extra)
