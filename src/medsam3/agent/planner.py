"""The planner: candidate fixes for one concept's result, chosen from the critic's signals.

Actions on a 2D plane of the compact backend reuse the plane's encoding (``PlaneContext``):

- ``reprompt:<phrase>``: the head's dense mask for a synonym or the parent concept, refined.
- ``box:<source>``: localise then segment: one box (from the parent's mask, the concept's prior
  location, or the dense map's peak) sent to the LiteMedSAM decoder.
- ``relax`` / ``tighten``: the dense mask at a lower / higher logit threshold.
- ``crop_zoom``: the plane cropped around the candidate region, segmented at the encoder's
  full resolution and pasted back (one more encoding).

``drop`` (remove components that are specks, on the wrong side, or outside the containing
concept) works on any mask: 2D, volumes and videos. Every action returns a ``Candidate``; the
loop keeps one only when the critic scores it higher (and, on 2D planes, the replacement rule
of :mod:`medsam3.agent.gain` expects a Dice gain).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

from medsam3.agent.critic import Evidence, container_of, iou
from medsam3.agent.priors import load_priors
from medsam3.models.compact import CompactSegmenter, PlaneState
from medsam3.models.concepts import get_concept, lateral_pair, parent_of, resolve
from medsam3.models.litemedsam import logits_to_original

THRESHOLD_STEP = 1.5  # logit change of relax / tighten
CROP_MARGIN = 0.5  # crop-and-zoom: box grown by this share of its size on each side
MIN_CROP = 64  # pixels: smallest crop side
MAX_CROP_SHARE = 0.9  # a crop this share of the plane or more is no closer look: not proposed
REASONS = {
    "drop": "specks, wrong side or outside the container",
    "box:peak": "localise at the dense map's peak",
    "box:parent": "localise in the parent / container",
    "box:prior": "localise at the prior location",
    "relax": "mask empty or off the prior size",
    "tighten": "mask large or ragged",
}


@dataclass
class Candidate:
    """One proposed result for a concept.

    Attributes:
        mask: bool mask, the shape of the concept's result (display order).
        presence: presence probability it comes with.
        action: the action that made it ("model" for the backend's own result).
        evidence: decoder / synonym agreement, when computed.
        encodings: image encodings the action cost.
        score: the critic's score (set by the loop).
        features: the critic's features (set by the loop).
    """

    mask: np.ndarray
    presence: float
    action: str = "model"
    evidence: Evidence = field(default_factory=Evidence)
    encodings: int = 0
    score: float = 0.0
    features: dict = field(default_factory=dict)


@dataclass
class Action:
    """A named, deferred fix: ``run()`` makes the candidate (None when it cannot apply)."""

    name: str
    reason: str
    run: Callable[[], Candidate | None]
    encodings: int = 0
    note: bool = False  # a trace-only entry (what an MLLM chose), never run for a candidate


@dataclass
class PlaneContext:
    """A 2D plane as the compact backend encoded it, for actions that reuse the encoding.

    Attributes:
        model: the compact segmenter.
        state: the encoded plane (its RGB mapping chosen for this concept).
        rgb: (y, x, 3) uint8 plane the state encodes.
        phrase: the phrase the model read (canonical name when known).
        dense: (1, 256, 256) dense logits of the phrase.
        others: masks of the call's other concepts (parent location, containment, side).
    """

    model: CompactSegmenter
    state: PlaneState
    rgb: np.ndarray
    phrase: str
    dense: torch.Tensor
    others: dict[str, np.ndarray] = field(default_factory=dict)
    _synonym: np.ndarray | None = None
    _logits: np.ndarray | None = None

    @property
    def threshold(self) -> float:
        """The model's presence threshold."""
        return float(self.model.presence_threshold)

    @property
    def logits(self) -> np.ndarray:
        """(y, x) float dense logits of the phrase in original pixels (computed once)."""
        if self._logits is None:
            dense = self.dense[None].float()
            self._logits = logits_to_original(dense, self.state.prep)[0, 0].cpu().numpy()
        return self._logits


def alternative_phrases(phrase: str) -> list[str]:
    """A synonym (first listed) and the parent concept of a phrase, without duplicates."""
    entry = get_concept(phrase)
    out = []
    if entry is not None:
        out += [s for s in entry.synonyms if s.lower() != phrase.lower()][:1]
    if parent := parent_of(phrase):
        out.append(parent)
    return list(dict.fromkeys(out))


def dense_mask(ctx: PlaneContext, dense: torch.Tensor, offset: float = 0.0) -> np.ndarray:
    """(y, x) bool mask of (1, 256, 256) dense logits, original pixels: the model's own cut
    (:meth:`medsam3.models.compact.CompactSegmenter.dense_mask`) moved by ``offset``."""
    return ctx.model.dense_mask(ctx.state, dense, offset)


def box_of(mask: np.ndarray) -> np.ndarray:
    """(1, 4) float32 x0, y0, x1, y1 box of a non-empty (y, x) mask, end exclusive."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([[xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]], np.float32)


def evidence(ctx: PlaneContext, mask: np.ndarray) -> Evidence:
    """Decoder agreement (mask vs the decoder's mask from its box), synonym agreement and
    the dense map's confidence inside the mask."""
    decoder = confidence = None
    if mask.any():
        decoded = ctx.model.decoder_masks(ctx.state, boxes=box_of(mask))[0]
        decoder = iou(mask, decoded)
        confidence = float(np.mean(expit(ctx.logits[mask])))
    synonym = synonym_mask(ctx)
    return Evidence(decoder, None if synonym is None else iou(mask, synonym), confidence)


def synonym_mask(ctx: PlaneContext) -> np.ndarray | None:
    """The dense mask of the phrase's first alternative (empty when it reads absent)."""
    if ctx._synonym is None:
        alts = alternative_phrases(ctx.phrase)
        if not alts:
            return None
        presence, dense = ctx.model.detect(ctx.state, alts[:1])
        mask = dense_mask(ctx, dense[0])
        ctx._synonym = mask if presence[0] >= ctx.threshold else np.zeros_like(mask)
    return ctx._synonym


def _cleaned(ctx: PlaneContext, mask: np.ndarray, presence: float, action: str, cost=0):
    """A candidate from a raw mask: specks dropped as the model does, evidence computed."""
    mask, _ = ctx.model.instances(mask, presence)
    return Candidate(mask, presence, action, evidence(ctx, mask), cost)


def reprompt(ctx: PlaneContext, alt: str, current: Candidate) -> Candidate:
    """The alternative phrase's dense mask, refined, kept to the original phrase's side."""
    presence, dense = ctx.model.detect(ctx.state, [alt])
    p = max(float(presence[0]), current.presence)
    mask = ctx.model.refine(ctx.state, dense[0], ctx.phrase) if p >= ctx.threshold else None
    mask = np.zeros(ctx.state.prep.original, bool) if mask is None else mask
    return _cleaned(ctx, mask, p, f"reprompt:{alt}")


def localise(ctx: PlaneContext, source: str, current: Candidate) -> Candidate | None:
    """One box (parent mask, prior location or dense peak) -> the decoder's mask."""
    box = _source_box(ctx, source)
    if box is None:
        return None
    mask = ctx.model.decoder_masks(ctx.state, boxes=box)[0]
    return _cleaned(ctx, mask, max(current.presence, ctx.threshold), f"box:{source}")


def _source_box(ctx: PlaneContext, source: str) -> np.ndarray | None:
    """A (1, 4) box from the parent / container mask, the prior location or the dense peak."""
    h, w = ctx.state.prep.original
    if source == "parent":
        name = parent_of(ctx.phrase) or container_of(ctx.phrase)
        ref = ctx.others.get(name) if name else None
        return box_of(ref) if ref is not None and ref.any() else None
    if source == "prior":
        prior = load_priors().concepts.get(resolve(ctx.phrase) or ctx.phrase)
        if prior is None:
            return None
        x0, y0, x1, y1 = prior.box
        return np.array([[x0 * w, y0 * h, x1 * w, y1 * h]], np.float32)
    return _peak_box(ctx)


def _peak_box(ctx: PlaneContext) -> np.ndarray | None:
    """Box of the dense map's component around its peak (logits above peak - 2)."""
    logits = ctx.logits
    peak = np.unravel_index(int(np.argmax(logits)), logits.shape)
    labels, _ = ndimage.label(logits > min(0.0, logits[peak] - 2.0))
    region = labels == labels[peak]
    return box_of(region) if region.any() else None


def rethreshold(ctx: PlaneContext, offset: float, current: Candidate) -> Candidate:
    """The dense mask at ``offset`` logits (negative relaxes, positive tightens)."""
    mask = dense_mask(ctx, ctx.dense, offset)
    name = "relax" if offset < 0 else "tighten"
    return _cleaned(ctx, mask, max(current.presence, ctx.threshold), name)


def crop_zoom(ctx: PlaneContext, current: Candidate) -> Candidate | None:
    """Segment a crop around the current mask (or the dense peak) and paste it back.

    None when there is no box, or when the crop covers MAX_CROP_SHARE of the plane or more:
    segmenting (nearly) the whole plane again only loses what the backend added (the tiles of
    a vessel tree).
    """
    box = box_of(current.mask)[0] if current.mask.any() else _peak_box(ctx)
    if box is None:
        return None
    shape = ctx.state.prep.original
    sl = crop_around(box.reshape(-1), shape)
    if crop_share(sl, shape) >= MAX_CROP_SHARE:
        return None
    result = ctx.model.segment_plane(ctx.rgb[sl], [ctx.phrase])[ctx.phrase]
    mask = np.zeros(shape, bool)
    mask[sl] = result.mask.astype(bool)
    presence = max(current.presence, float(result.presence))
    return _cleaned(ctx, mask, presence, "crop_zoom", cost=1)


def crop_share(sl: tuple[slice, slice], shape: tuple[int, int]) -> float:
    """The share of a (y, x) plane that the crop ``sl`` covers."""
    return (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) / (shape[0] * shape[1])


def crop_around(box: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice]:
    """(y, x) slices of a box grown by CROP_MARGIN each side, at least MIN_CROP, in bounds."""
    x0, y0, x1, y1 = (float(v) for v in box)
    half_w = max(MIN_CROP, (x1 - x0) * (1 + 2 * CROP_MARGIN)) / 2
    half_h = max(MIN_CROP, (y1 - y0) * (1 + 2 * CROP_MARGIN)) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ys = slice(max(0, int(cy - half_h)), min(shape[0], int(np.ceil(cy + half_h))))
    xs = slice(max(0, int(cx - half_w)), min(shape[1], int(np.ceil(cx + half_w))))
    return ys, xs


def drop_implausible(
    phrase: str, current: Candidate, others: dict[str, np.ndarray], min_share: float = 0.1
) -> Candidate | None:
    """Remove components that are specks (< min_share of the largest), on the wrong side of a
    lateral concept's image half, or mostly outside the containing concept's mask.

    Works on (y, x) and (n, y, x) masks (26-connected in 3D). None when nothing would change.
    """
    mask = current.mask
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if n < 1:
        return None
    areas = ndimage.sum_labels(mask, labels, range(1, n + 1))
    keep = areas >= min_share * areas.max()
    container = others.get(container_of(phrase) or "")
    pair = lateral_pair(phrase)
    for i, sl in enumerate(ndimage.find_objects(labels)):
        comp = labels[sl] == i + 1
        if container is not None and container.any():
            inside = np.logical_and(comp, container[sl]).sum() / comp.sum()
            keep[i] &= inside >= 0.5
        if pair is not None:
            centre = (sl[-1].start + sl[-1].stop - 1) / 2
            keep[i] &= (centre > (mask.shape[-1] - 1) / 2) == (pair[0] == "left")
    if keep.all() or not keep.any():
        return None
    kept = np.isin(labels, np.flatnonzero(keep) + 1)
    return Candidate(kept, current.presence, "drop")


def plane_actions(
    ctx: PlaneContext, current: Candidate, budget: int, every: bool = False
) -> list[Action]:
    """The 2D actions the critic's features call for, most promising first.

    Args:
        ctx: the encoded plane.
        current: the result now (its features set by the loop).
        budget: encodings still allowed (crop-and-zoom needs one).
        every: propose every action whatever the features say (fitting the replacement rule).

    Returns:
        Actions to try this round.
    """
    f, empty = current.features, not current.mask.any()
    off_shape = empty or f.get("share_out", 0) > 0
    misplaced = off_shape or f.get("decoder_iou", 1) < 0.5
    runs = {
        "drop": lambda: drop_implausible(ctx.phrase, current, ctx.others),
        "box:peak": lambda: localise(ctx, "peak", current),
        "box:parent": lambda: localise(ctx, "parent", current),
        "box:prior": lambda: localise(ctx, "prior", current),
        "relax": lambda: rethreshold(ctx, -THRESHOLD_STEP, current),
        "tighten": lambda: rethreshold(ctx, THRESHOLD_STEP, current),
    }
    wanted = {
        "drop": True,
        "box:peak": misplaced,
        "box:parent": misplaced,
        "box:prior": misplaced,
        "relax": off_shape,
        "tighten": not empty,
    }
    acts = [Action(n, REASONS[n], run) for n, run in runs.items() if every or wanted[n]]
    for alt in alternative_phrases(ctx.phrase):
        acts.append(
            Action(f"reprompt:{alt}", "synonym / parent", lambda a=alt: reprompt(ctx, a, current))
        )
    if budget >= 1:
        acts.append(Action("crop_zoom", "look closer", lambda: crop_zoom(ctx, current), 1))
    return acts


def stack_actions(
    phrase: str,
    current: Candidate,
    others: dict[str, np.ndarray],
    resegment: Callable[[str], tuple[np.ndarray, float]],
    budget: int,
) -> list[Action]:
    """Actions for volumes, videos and backends without plane verbs: drop and re-prompt.

    Args:
        phrase: the concept.
        current: the result now.
        others: masks of the call's other concepts.
        resegment: phrase -> (mask, presence) from the backend (one encoding pass).
        budget: encodings still allowed.

    Returns:
        Actions to try this round.
    """
    acts = [Action("drop", REASONS["drop"], lambda: drop_implausible(phrase, current, others))]
    if budget >= 1:
        for alt in alternative_phrases(phrase)[:1]:
            acts.append(
                Action(
                    f"reprompt:{alt}",
                    "synonym / parent",
                    lambda a=alt: _restack(a, resegment, current),
                    1,
                )
            )
    return acts


def _restack(alt: str, resegment, current: Candidate) -> Candidate:
    mask, presence = resegment(alt)
    return Candidate(
        np.asarray(mask, bool), max(presence, current.presence), f"reprompt:{alt}", encodings=1
    )
