"""Volumes and videos with a 2D segmenter: detect per slice, then propagate between slices.

Every slice / frame is encoded once (the LiteMedSAM mask decoder needs its embedding anyway) and
the concept head scores every phrase on it (cheap). Slices whose presence passes the model's
threshold, and at least ``extend_threshold``, are key slices: their mask comes from the head
(dense mask cut at logit 0, not below the slice's peak as on 2D images, since an empty slice is
what ends an object; then decoder refinement), which also catches new instances. Presence is
then read with hysteresis: a run of consecutive slices whose presence stays above
``extend_threshold`` keeps the head's masks when it holds a key slice (an object seen clearly on
one slice is trusted on the neighbouring, less certain ones). From there the mask is propagated
slice to slice into neighbours the head left empty, prompting the LiteMedSAM decoder with the
previous slice's box; the propagation stops where presence drops below ``stop_threshold`` or the
propagated mask vanishes or jumps in size.

Thin-sliced volumes need not be encoded on every slice: with a slice stride k > 1 (see
:func:`slice_stride`) only every k-th slice (and the last) is encoded and read as above, and
the slices between two encoded ones get a mask interpolated from their signed distance maps
(shape-based interpolation) and a linearly interpolated presence. Videos are read frame by
frame.
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


def slice_stride(spacing: tuple[float, ...] | None, key_spacing_mm: float | None) -> int:
    """Encode every k-th slice: k = round(key_spacing_mm / slice spacing), at least 1.

    Args:
        spacing: SimpleITK (x, y, z) spacing in mm of the display-order volume, or None.
        key_spacing_mm: wanted distance between encoded slices; None or 0 encodes every slice.
    """
    if not key_spacing_mm or spacing is None or len(spacing) < 3 or spacing[2] <= 0:
        return 1
    return max(1, round(key_spacing_mm / float(spacing[2])))


def key_slices(n: int, stride: int) -> list[int]:
    """The encoded slices: every ``stride``-th from the first, and the last."""
    keys = list(range(0, n, max(1, stride)))
    if keys[-1] != n - 1:
        keys.append(n - 1)
    return keys


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's boundary: negative inside, positive outside."""
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def interpolate_masks(keys: list[int], masks: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Masks of all n slices from those of the key slices (shape-based interpolation).

    Between two non-empty key masks a slice gets the zero level of the linearly blended signed
    distance maps; next to an empty key it takes the nearer key's mask (an object that ends
    between two keys keeps its last outline up to half way).

    Args:
        keys: increasing slice indices, the first 0 and the last n - 1.
        masks: (y, x) bool mask of each key slice.
        n: number of slices.
    """
    out = [np.zeros_like(masks[0]) for _ in range(n)]
    for z, m in zip(keys, masks, strict=True):
        out[z] = m
    for i in range(len(keys) - 1):
        (z0, z1), (m0, m1) = keys[i : i + 2], masks[i : i + 2]
        if z1 - z0 < 2 or not (m0.any() or m1.any()):
            continue
        both = m0.any() and m1.any()
        d0, d1 = (_signed_distance(m0), _signed_distance(m1)) if both else (None, None)
        for z in range(z0 + 1, z1):
            t = (z - z0) / (z1 - z0)
            if both:
                out[z] = (1 - t) * d0 + t * d1 < 0
            else:  # the nearer key; half way, the non-empty one
                out[z] = (m0 if t < 0.5 or (t == 0.5 and m0.any()) else m1).copy()
    return out


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
    stride: int = 1,
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
        stride: encode every ``stride``-th slice and interpolate between (volumes only).

    Returns:
        phrase -> ConceptResult with (z, y, x) / (t, y, x) uint8 masks, 3D instances and
        extra["presence_per_slice"], ["detected_slices"], ["encoded_slices"] (count) and
        ["blank_slices"]: slices of a single grey level (air above the head, zero padding),
        which are not encoded and get presence 0 (the head, never trained on one, scores a
        blank plane near 0.5).
    """
    planes, rng = _planes(stack, kind, modality)
    # a key slice needs the model's presence threshold, and never less than the extension's
    # (the threshold is fitted on 2D images; lower key thresholds were not measured on volumes)
    key_threshold = max(model.presence_threshold, extend_threshold)
    n = len(planes)
    keys = key_slices(n, stride if kind == "volume" else 1)
    pres = {p: np.zeros(len(keys)) for p in phrases}
    detected = {p: [np.zeros(planes[z].shape[:2], bool) for z in keys] for p in phrases}
    states: dict[tuple[str, int], object] = {}
    jobs = [
        (k, rgb, group)
        for k, z in enumerate(keys)
        for rgb, group in model.plane_rgb_groups(planes[z], phrases, modality, rng)
    ]
    blank = {(keys[k], tuple(group)) for k, rgb, group in jobs if rgb.min() == rgb.max()}
    jobs = [(k, rgb, group) for k, rgb, group in jobs if (keys[k], tuple(group)) not in blank]
    for start in range(0, len(jobs), ENCODE_CHUNK):  # batched encoder passes, bounded memory
        part = jobs[start : start + ENCODE_CHUNK]
        for (k, _rgb, group), state in zip(
            part, model.encode_planes([rgb for _, rgb, _ in part], modality), strict=True
        ):
            presence, dense = model.detect(state, group, mask_threshold=extend_threshold)
            for i, p in enumerate(group):
                pres[p][k] = presence[i]
                states[(p, k)] = state
                if presence[i] >= extend_threshold:  # key slices and their extensions
                    detected[p][k] = model.refine(state, dense[i], p, relative=False)
            state.feats = {}  # keep only what the decoder needs
    encoded = set(keys)
    flat = [z for z in range(n) if z not in encoded and planes[z].min() == planes[z].max()]
    results = {}
    for p in phrases:
        keep = hysteresis(pres[p], key_threshold, extend_threshold)
        detected[p] = [m if keep[k] else np.zeros_like(m) for k, m in enumerate(detected[p])]

        def decode_box(k, box, p=p):
            return model.decoder_masks(states[(p, k)], boxes=np.array([box], np.float32))[0]

        masks = propagate_masks(detected[p], pres[p], decode_box, stop_threshold)
        blanks = sorted({z for z, group in blank if p in group} | set(flat))
        volume = np.stack(interpolate_masks(keys, masks, n)).astype(np.uint8)
        volume[blanks] = 0
        presence = np.interp(np.arange(n), keys, pres[p])
        presence[blanks] = 0.0
        cap = model.presence_threshold - 0.01  # no mask: report "absent"
        overall = float(pres[p].max()) if volume.any() else float(min(pres[p].max(), cap))
        results[p] = ConceptResult(
            concept=p,
            mask=volume,
            presence=overall,
            instances=instances_3d(volume, overall),
            extra={
                "presence_per_slice": [round(float(v), 4) for v in presence],
                "detected_slices": [keys[k] for k, m in enumerate(detected[p]) if m.any()],
                "encoded_slices": len({keys[k] for k, _, group in jobs if p in group}),
                "blank_slices": blanks,
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
