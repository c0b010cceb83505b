"""Volumes and videos with a 2D segmenter: detect per slice, then propagate between slices.

Every slice / frame is encoded once (the LiteMedSAM mask decoder needs its embedding anyway) and
the concept head scores every phrase on it (cheap). Slices whose presence passes the threshold
are key slices: their mask comes from the head (dense + decoder refinement), which also catches
new instances. Presence is then read with hysteresis: a run of consecutive slices whose
presence stays above ``extend_threshold`` keeps the head's masks when it holds a key slice (an
object seen clearly on one slice is trusted on the neighbouring, less certain ones). From there
the mask is propagated slice to slice into neighbours the head left empty, prompting the
LiteMedSAM decoder with the previous slice's box; the propagation stops where presence drops
below ``stop_threshold`` or the propagated mask vanishes or jumps in size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsam3.models.base import ConceptResult, Instance
from medsam3.models.preprocess import volume_intensity_range
from medsam3.types import Kind

ENCODE_CHUNK = 32  # planes handed to the encoder at once (the device then picks its batch)


def _bbox(mask: np.ndarray, pad: int = 2) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of a 2D mask, padded and clipped; None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    h, w = mask.shape
    return (
        max(0, xs.min() - pad),
        max(0, ys.min() - pad),
        min(w, xs.max() + 1 + pad),
        min(h, ys.max() + 1 + pad),
    )


def propagate_masks(
    masks: list[np.ndarray],
    presence: np.ndarray,
    decode_box,
    stop_threshold: float = 0.2,
    max_growth: float = 2.5,
) -> list[np.ndarray]:
    """Fill slices next to detected ones by box-prompted decoding, in both directions.

    Args:
        masks: per-slice (y, x) bool masks from detection (empty where not detected).
        presence: (n,) per-slice presence in [0, 1].
        decode_box: callable (slice index, (x0, y0, x1, y1)) -> (y, x) bool mask.
        stop_threshold: do not propagate into slices with presence below this.
        max_growth: stop when the area changes by more than this factor between slices.

    Returns:
        The completed per-slice masks (new list; detected slices unchanged).
    """
    out = [m.copy() for m in masks]
    n = len(out)
    for step in (1, -1):
        order = range(1, n) if step == 1 else range(n - 2, -1, -1)
        for z in order:
            prev = out[z - step]
            if out[z].any() or not prev.any() or presence[z] < stop_threshold:
                continue
            box = _bbox(prev)
            cand = decode_box(z, box)
            area, prev_area = cand.sum(), prev.sum()
            if area == 0 or not (1 / max_growth <= area / max(prev_area, 1) <= max_growth):
                continue
            out[z] = cand
    return out


def hysteresis(presence: np.ndarray, high: float, low: float) -> np.ndarray:
    """Slices in runs of presence >= low that contain at least one slice >= high.

    Args:
        presence: (n,) per-slice presence.
        high: key-slice threshold.
        low: extension threshold (<= high).

    Returns:
        (n,) bool.
    """
    runs, _ = ndimage.label(presence >= low)
    seeded = np.unique(runs[presence >= high])
    return np.isin(runs, seeded[seeded > 0])


def _planes(stack: np.ndarray, kind: Kind, modality: str | None):
    """Per-plane arrays and the shared intensity range for non-CT float volumes."""
    rng = None
    if kind == "volume" and stack.dtype != np.uint8 and (modality or "").lower() != "ct":
        rng = volume_intensity_range(stack)
    return [stack[i] for i in range(stack.shape[0])], rng


def segment_compact_stack(
    model,
    stack: np.ndarray,
    phrases: list[str],
    kind: Kind,
    modality: str | None = None,
    stop_threshold: float = 0.2,
    extend_threshold: float = 0.35,
) -> dict[str, ConceptResult]:
    """Segment a (z, y, x) volume or (t, y, x[, c]) video with a CompactSegmenter.

    Args:
        model: a CompactSegmenter (uses plane_rgb_groups, encode_planes, detect, refine,
            decoder_masks).
        stack: volume or video array.
        phrases: checked phrases.
        kind: "volume" or "video".
        modality: drives intensity mapping (CT windows per phrase).
        stop_threshold: minimum per-slice presence for propagation.
        extend_threshold: presence from which the head's own mask is kept on slices next to
            key slices (hysteresis; see the module docstring).

    Returns:
        phrase -> ConceptResult with (z, y, x) / (t, y, x) uint8 masks, 3D instances and
        extra["presence_per_slice"], ["detected_slices"] and ["blank_slices"]: slices of a
        single grey level (air above the head, zero padding), which are not encoded and get
        presence 0 (the head, never trained on one, scores a blank plane near 0.5).
    """
    planes, rng = _planes(stack, kind, modality)
    n = len(planes)
    pres = {p: np.zeros(n) for p in phrases}
    detected = {p: [np.zeros(plane.shape[:2], bool) for plane in planes] for p in phrases}
    states: dict[tuple[str, int], object] = {}
    jobs = [
        (z, rgb, group)
        for z, plane in enumerate(planes)
        for rgb, group in model.plane_rgb_groups(plane, phrases, modality, rng)
    ]
    blank = {(z, tuple(group)) for z, rgb, group in jobs if rgb.min() == rgb.max()}
    jobs = [(z, rgb, group) for z, rgb, group in jobs if (z, tuple(group)) not in blank]
    for start in range(0, len(jobs), ENCODE_CHUNK):  # batched encoder passes, bounded memory
        part = jobs[start : start + ENCODE_CHUNK]
        for (z, _rgb, group), state in zip(
            part, model.encode_planes([rgb for _, rgb, _ in part], modality), strict=True
        ):
            presence, dense = model.detect(state, group)
            for k, p in enumerate(group):
                pres[p][z] = presence[k]
                states[(p, z)] = state
                if presence[k] >= min(extend_threshold, model.presence_threshold):
                    detected[p][z] = model.refine(state, dense[k], p)
            state.feats = {}  # keep only what the decoder needs
    results = {}
    for p in phrases:
        keep = hysteresis(pres[p], model.presence_threshold, extend_threshold)
        detected[p] = [m if keep[z] else np.zeros_like(m) for z, m in enumerate(detected[p])]

        def decode_box(z, box, p=p):
            return model.decoder_masks(states[(p, z)], boxes=np.array([box], np.float32))[0]

        masks = propagate_masks(detected[p], pres[p], decode_box, stop_threshold)
        volume = np.stack(masks).astype(np.uint8)
        cap = model.presence_threshold - 0.01  # no mask: report "absent"
        overall = float(pres[p].max()) if volume.any() else float(min(pres[p].max(), cap))
        results[p] = ConceptResult(
            concept=p,
            mask=volume,
            presence=overall,
            instances=instances_3d(volume, overall),
            extra={
                "presence_per_slice": [round(float(v), 4) for v in pres[p]],
                "detected_slices": [i for i, m in enumerate(detected[p]) if m.any()],
                "blank_slices": sorted(z for z, group in blank if p in group),
            },
        )
    return results


def instances_3d(
    volume: np.ndarray, score: float, min_voxels: int = 8, max_instances: int = 64
) -> list[Instance]:
    """3D connected components as Instances (largest first).

    Args:
        volume: (z, y, x) uint8/bool mask.
        score: score given to each instance.
        min_voxels: smaller components are skipped.
        max_instances: at most this many instances are returned.

    Returns:
        Instances with (z, y, x) bool masks and (x0, y0, z0, x1, y1, z1) boxes (end exclusive).
    """
    labels, n = ndimage.label(volume > 0)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(volume > 0, labels, range(1, n + 1))
    slices = ndimage.find_objects(labels)
    out = []
    for i in np.argsort(-sizes)[:max_instances]:
        if sizes[i] < min_voxels:
            break
        sl = slices[i]
        full = np.zeros(volume.shape, bool)
        full[sl] = labels[sl] == i + 1
        box = (sl[2].start, sl[1].start, sl[0].start, sl[2].stop, sl[1].stop, sl[0].stop)
        out.append(Instance(full, tuple(int(v) for v in box), float(score)))
    return out
