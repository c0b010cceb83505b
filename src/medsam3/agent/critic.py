"""The critic: how plausible one concept's mask is, from what the model already computed.

Signals (features, each a float; the critic never sees ground truth):

- ``presence_agree``: the presence probability when the mask is not empty, else 1 - presence
  (a mask that disagrees with the model's own presence is suspect); ``empty``: 1 for an empty
  mask.
- ``share_out``: how far (log10 units) the mask's share of the plane lies outside the training
  masks' 5th-95th percentile (0 inside; per non-empty slice / frame for volumes and videos).
- ``components_excess``: components beyond the training masks' 95th percentile, relative.
- ``decoder_iou``: IoU of the mask with the LiteMedSAM decoder's mask from its own box.
- ``synonym_iou``: IoU with the dense mask of a synonym or the parent concept.
- ``dense_confidence``: the mean probability of the head's dense map inside the mask (low
  where the head was unsure, or where a candidate reaches beyond what the head marked).
- ``relation``: containment in the containing concept ("liver tumor" in "liver") and the
  side of a lateral concept (the patient's left on the image's right, radiological order):
  1 consistent, 0 violated, 0.5 unknown.
- ``continuity``: for volumes and videos, 1 / the number of runs of non-empty slices.

``critic_score`` is a logistic regression of these features, fitted on the validation split to
predict that the result is right (Dice >= 0.5 where the concept is annotated, an empty mask
where it is not; coefficients in ``medsam3/data/agent_priors.json``). A feature the
caller could not compute takes its neutral value (``NEUTRAL``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsam3.agent.priors import ConceptPrior, Priors, load_priors
from medsam3.models.concepts import lateral_pair, parent_of, resolve

FEATURES = (
    "presence_agree",
    "empty",
    "share_out",
    "components_excess",
    "decoder_iou",
    "synonym_iou",
    "relation",
    "continuity",
    "dense_confidence",
)
NEUTRAL = {
    "decoder_iou": 0.5,
    "synonym_iou": 0.5,
    "relation": 0.5,
    "continuity": 1.0,
    "dense_confidence": 0.5,
}
# Used until coefficients are fitted: presence and agreement up, implausible shapes down.
DEFAULT_COEF = (4.0, 0.0, -1.5, -1.0, 2.0, 1.5, 1.5, 1.0, 1.0)
DEFAULT_INTERCEPT = -4.0
PART_WORDS = {"tumor", "tumour", "lesion", "nodule", "cyst", "root", "crown", "wall"}


@dataclass
class Evidence:
    """Model outputs beyond the mask that the critic uses when the caller computed them.

    Attributes:
        decoder_iou: IoU of the mask with the decoder's mask from the mask's box.
        synonym_iou: IoU of the mask with a synonym's (or the parent's) dense mask.
        confidence: mean probability of the head's dense map inside the mask.
    """

    decoder_iou: float | None = None
    synonym_iou: float | None = None
    confidence: float | None = None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks of one shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def container_of(concept: str) -> str | None:
    """The concept that contains another: its vocabulary parent, or the organ its name starts
    with ("liver tumor" -> "liver", "tooth root" -> "tooth"), else None."""
    name = resolve(concept) or concept.lower().strip()
    if parent := parent_of(name):
        return parent
    head, _, tail = name.rpartition(" ")
    if tail in PART_WORDS and head and resolve(head):
        return resolve(head)
    return None


def plane_stats(mask: np.ndarray, planar: bool) -> tuple[float | None, float]:
    """Median log10 share and median component count over the non-empty planes of a mask.

    Args:
        mask: (y, x) bool mask, or (n, y, x) for volumes/videos (``planar`` False).
        planar: whether ``mask`` is one plane.

    Returns:
        (log10 share or None when empty, component count).
    """
    planes = [mask] if planar else [m for m in mask if m.any()]
    planes = [p for p in planes if p.any()]
    if not planes:
        return None, 0.0
    shares = [math.log10(p.sum() / p.size) for p in planes]
    comps = [ndimage.label(p, structure=np.ones((3, 3)))[1] for p in planes]
    return float(np.median(shares)), float(np.median(comps))


def shape_features(mask: np.ndarray, prior: ConceptPrior | None, planar: bool) -> dict:
    """``share_out`` and ``components_excess`` of a mask against a concept prior."""
    share, comps = plane_stats(mask, planar)
    if share is None or prior is None:
        return {"share_out": 0.0, "components_excess": 0.0}
    lo, _, hi = prior.log_share
    out = max(0.0, lo - share, share - hi)
    excess = max(0.0, comps - prior.components) / (prior.components + 1.0)
    return {"share_out": min(out, 3.0), "components_excess": min(excess, 3.0)}


def continuity(mask: np.ndarray, planar: bool) -> float:
    """1 / the number of runs of non-empty planes (1.0 for one plane or an empty mask)."""
    if planar or not mask.any():
        return 1.0
    filled = mask.reshape(len(mask), -1).any(1).astype(int)
    runs = int(np.sum(np.diff(np.concatenate([[0], filled])) == 1))
    return 1.0 / max(1, runs)


def side_consistency(concept: str, mask: np.ndarray, others: dict[str, np.ndarray]) -> float | None:
    """Whether a "left X" / "right X" mask lies on its side (radiological display order).

    The midline is that of the bilateral concept X (or of the opposite side's concept) when it
    was segmented in the same call, else the plane's centre column.

    Returns:
        1.0 on the right side, 0.0 on the wrong one, None when not lateral or empty.
    """
    pair = lateral_pair(concept)
    if pair is None or not mask.any():
        return None
    side, base = pair
    opposite = _named(others, f"{'right' if side == 'left' else 'left'} {base}")
    if opposite is not None and opposite.any():
        return float((_centre(mask) > _centre(opposite)) == (side == "left"))
    both = _named(others, base)
    midline = _centre(both) if both is not None and both.any() else (mask.shape[-1] - 1) / 2
    return float((_centre(mask) > midline) == (side == "left"))


def containment(concept: str, mask: np.ndarray, others: dict[str, np.ndarray]) -> float | None:
    """Share of a mask inside its container's mask, when the container was segmented too."""
    container = container_of(concept)
    ref = _named(others, container) if container else None
    if ref is None or not ref.any() or not mask.any():
        return None
    return float(np.logical_and(mask, ref).sum() / mask.sum())


def relation(concept: str, mask: np.ndarray, others: dict[str, np.ndarray]) -> float:
    """1 consistent, 0 violated, 0.5 unknown: containment (>= 0.5 inside) and side."""
    checks = []
    if (share := containment(concept, mask, others)) is not None:
        checks.append(float(share >= 0.5))
    if (side := side_consistency(concept, mask, others)) is not None:
        checks.append(side)
    return min(checks) if checks else NEUTRAL["relation"]


def _centre(mask: np.ndarray) -> float:
    """Centre of the columns a non-empty (y, x) or (n, y, x) mask touches."""
    cols = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(0))
    return (cols[0] + cols[-1]) / 2


def _named(others: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    """The mask of a concept among the call's others, by name or synonym."""
    canonical = resolve(name) or name
    for phrase, mask in others.items():
        if phrase == name or (resolve(phrase) or phrase) == canonical:
            return mask
    return None


def features(
    concept: str,
    mask: np.ndarray,
    presence: float,
    others: dict[str, np.ndarray] | None = None,
    evidence: Evidence | None = None,
    priors: Priors | None = None,
) -> dict[str, float]:
    """The critic's features of one concept's result.

    Args:
        concept: the phrase.
        mask: (y, x) bool mask of a 2D image, or (n, y, x) of a volume / video, display order.
        presence: presence probability.
        others: masks of the other concepts of the same call (containment, side).
        evidence: decoder and synonym agreement, when computed.
        priors: concept priors (default: the shipped ones).

    Returns:
        FEATURES -> value.
    """
    priors = priors or load_priors()
    mask = np.asarray(mask, bool)
    planar = mask.ndim == 2
    evidence = evidence or Evidence()
    prior = priors.concepts.get(resolve(concept) or concept)
    return {
        "presence_agree": float(presence if mask.any() else 1.0 - presence),
        "empty": float(not mask.any()),
        **shape_features(mask, prior, planar),
        "decoder_iou": _or_neutral(evidence.decoder_iou, "decoder_iou"),
        "synonym_iou": _or_neutral(evidence.synonym_iou, "synonym_iou"),
        "relation": relation(concept, mask, others or {}),
        "continuity": continuity(mask, planar),
        "dense_confidence": _or_neutral(evidence.confidence, "dense_confidence"),
    }


def _or_neutral(value: float | None, name: str) -> float:
    return NEUTRAL[name] if value is None else float(value)


def critic_score(values: dict[str, float], priors: Priors | None = None) -> float:
    """The critic's probability that a result is right (Dice >= 0.5), in [0, 1].

    Args:
        values: :func:`features` output.
        priors: holds the fitted coefficients (default: the shipped ones; built-in defaults
            when none were fitted).

    Returns:
        sigmoid(coef . features + intercept).
    """
    priors = priors or load_priors()
    names, coef, bias = priors.features, priors.coef, priors.intercept
    if not names:
        names, coef, bias = FEATURES, DEFAULT_COEF, DEFAULT_INTERCEPT
    z = bias + sum(c * values.get(n, NEUTRAL.get(n, 0.0)) for n, c in zip(names, coef, strict=True))
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


# The direction each feature may push the score (0: free). A fitted weight against its
# direction (a wrong-side mask scoring higher, say) would teach the loop to make things worse;
# such a weight is fixed at 0 and the others refitted.
SIGNS = {
    "presence_agree": 1,
    "empty": 0,
    "share_out": -1,
    "components_excess": -1,
    "decoder_iou": 1,
    "synonym_iou": 1,
    "relation": 1,
    "continuity": 1,
    "dense_confidence": 1,
}


def fit_coefficients(rows: list[dict], l2: float = 1.0) -> tuple[list, float]:
    """Fit the critic's logistic regression: L2 on the weights, each weight kept to its sign.

    Args:
        rows: dicts with every FEATURES key and ``label`` (1: the result is right).
        l2: ridge strength.

    Returns:
        (one coefficient per FEATURES entry, intercept).
    """
    x = np.array([[r[f] for f in FEATURES] for r in rows], float)
    y = np.array([r["label"] for r in rows], float)
    free = np.ones(len(FEATURES), bool)
    while True:
        w = _newton(np.hstack([x[:, free], np.ones((len(x), 1))]), y, l2)
        coef = np.zeros(len(FEATURES))
        coef[free] = w[:-1]
        wrong = np.array([SIGNS[f] * c < 0 for f, c in zip(FEATURES, coef, strict=True)])
        if not wrong.any():
            return [round(float(v), 4) for v in coef], round(float(w[-1]), 4)
        free &= ~wrong


def _newton(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 200) -> np.ndarray:
    """Ridge logistic regression by Newton steps; the last column is the unpenalised bias."""
    w = np.zeros(x.shape[1])
    ridge = np.eye(x.shape[1]) * l2
    ridge[-1, -1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w
