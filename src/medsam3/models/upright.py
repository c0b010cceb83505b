"""Which way up a 2D radiology image is: its display order, recognised from the pixels.

A volume's display order comes from its header (:mod:`medsam3.models.orientation`); a PNG or
JPEG slice has none, and public 2D sets often store slices turned or flipped (a NIfTI slice
saved without its transpose shows the patient on their side). The concept head loses about a
third of its Dice on a turned slice, so CT, MRI and X-ray images are put the right way up
before they are segmented and their masks mapped back.

The classifier is a small CNN on a 64 x 64 grey thumbnail that names one of the eight
:class:`DisplayOrder` s (transpose, flip rows, flip columns) taking the stored image to display
order. It is trained by :mod:`medsam3.training.fit_upright` on display-order planes of the
training split, stored in ``weights/upright.safetensors`` with its JSON (classes, the
confidence needed to act, training facts). Below that confidence, and for symmetric views it
cannot tell from their mirror image, the image is segmented as stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsam3.models.base import ConceptResult
from medsam3.models.orientation import DisplayOrder, map_masks

log = logging.getLogger("medsam3.models.upright")

SIDE = 64  # thumbnail side the classifier sees
MODALITIES = frozenset({"ct", "mri", "xray"})  # modalities with a conventional way up
# class index -> the DisplayOrder that takes a stored image to display order
ORDERS = tuple(DisplayOrder(t, r, c) for t, r, c in product((False, True), repeat=3))
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "upright.safetensors"


@dataclass(frozen=True)
class UprightGuess:
    """The recognised display order of an image and the classifier's probability for it."""

    order: DisplayOrder
    confidence: float


def thumbnail(rgb: np.ndarray, side: int = SIDE) -> torch.Tensor:
    """(y, x[, c]) image -> (1, side, side) float32: grey, centred on a square, standardised.

    The square is padded on both sides so that a flipped image's padding is the flip of the
    original's (the classifier cannot read the order off where the padding is).
    """
    grey = np.asarray(rgb, np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    t = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    h, w = grey.shape
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    t = (t - t.mean()) / (t.std() + 1e-6)
    top, left = (side - size[0]) // 2, (side - size[1]) // 2
    t = F.pad(t, (left, side - size[1] - left, top, side - size[0] - top), value=float(t.min()))
    return t[0]


class UprightNet(nn.Module):
    """Scores how much a thumbnail looks like display order, for each of its eight orders.

    One small CNN (four strided conv blocks, 64 -> 4 px, and an MLP over the 4 x 4 map) gives
    a thumbnail one score; the logit of order k is the score of the thumbnail put in order k.
    The net so learns what display order looks like once, not eight times.
    """

    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        chans = (1, width, 2 * width, 4 * width, 4 * width)
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            blocks += [conv, nn.GroupNorm(4, cout), nn.GELU()]
        self.features = nn.Sequential(*blocks)
        self.score = nn.Sequential(
            nn.Flatten(),
            nn.Linear(chans[-1] * (SIDE // 16) ** 2, hidden),
            nn.GELU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, SIDE, SIDE) thumbnails -> (B, 8) logits over :data:`ORDERS`."""
        views = torch.stack([_in_order(x, o) for o in ORDERS], dim=1)  # (B, 8, 1, S, S)
        scores = self.score(self.features(views.flatten(0, 1)))
        return scores.view(len(x), len(ORDERS))


def _in_order(x: torch.Tensor, order: DisplayOrder) -> torch.Tensor:
    """``order.to_display`` on the last two axes of a tensor."""
    if order.transpose:
        x = x.transpose(-1, -2)
    if order.flip_rows:
        x = x.flip(-2)
    if order.flip_cols:
        x = x.flip(-1)
    return x


class Upright:
    """A trained :class:`UprightNet` and the confidence it needs before an image is turned."""

    def __init__(
        self, net: UprightNet, min_confidence: float, info: dict | None = None, digest: str = ""
    ) -> None:
        self.net = net.eval()
        self.min_confidence = float(min_confidence)
        self.info = info or {}
        self.digest = digest  # sha256 of the weights and JSON (part of a model's digest)

    @torch.inference_mode()
    def probabilities(self, rgbs: list[np.ndarray]) -> np.ndarray:
        """(N, 8) probabilities over :data:`ORDERS` for a list of images."""
        x = torch.stack([thumbnail(a) for a in rgbs])
        return torch.softmax(self.net(x), dim=-1).numpy()

    def order_to_apply(self, rgb: np.ndarray) -> tuple[DisplayOrder, UprightGuess]:
        """The order to segment ``rgb`` in (:func:`decide`) and the classifier's best guess."""
        prob = self.probabilities([rgb])
        k = int(decide(prob, self.min_confidence)[0])
        best = int(prob[0].argmax())
        if k:
            log.debug("image stored turned: segmented as %s (p %.3f)", ORDERS[k], prob[0, k])
        return ORDERS[k], UprightGuess(ORDERS[best], round(float(prob[0, best]), 4))


def _mirror_partners() -> np.ndarray:
    """partner[k]: the order whose display is the left-right mirror of ORDERS[k]'s."""
    probe = np.arange(9).reshape(1, 3, 3)
    shown = [o.to_display(probe)[0] for o in ORDERS]
    mirror = [next(j for j, b in enumerate(shown) if (b == a[:, ::-1]).all()) for a in shown]
    return np.array(mirror)


MIRROR = _mirror_partners()


def decide(prob: np.ndarray, min_confidence: float) -> np.ndarray:
    """Which order to apply to each image, from (N, 8) probabilities over :data:`ORDERS`.

    Which side is up is easier to see than which side is the patient's left (a brain is
    nearly symmetric), so an order and its mirror share their probability: an image is turned
    when one such pair, other than the stored order's own, reaches ``min_confidence``, into the
    more probable of the two. A mirror alone needs ``min_confidence`` by itself.

    Returns:
        (N,) indices into :data:`ORDERS` (0: segment as stored).
    """
    rows = np.arange(len(prob))
    pair = prob + prob[:, MIRROR]
    top = pair.argmax(axis=1)
    member = np.where(prob[rows, top] >= prob[rows, MIRROR[top]], top, MIRROR[top])
    stored_pair = (member == 0) | (member == MIRROR[0])
    turned = ~stored_pair & (pair[rows, top] >= min_confidence)
    mirrored = stored_pair & (prob[:, MIRROR[0]] >= min_confidence)
    return np.where(turned, member, np.where(mirrored, MIRROR[0], 0))


def load_upright(path: str | Path | None = None) -> Upright:
    """The classifier from ``path`` (default: the packaged weights) and its sibling JSON."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"upright classifier weights not found at {path}; train them with "
            "`python -m medsam3.training.fit_upright` or set upright: off"
        )
    info_text = path.with_suffix(".json").read_bytes()
    info = json.loads(info_text)
    net = UprightNet(**info.get("config", {}))
    net.load_state_dict(load_file(str(path)))
    digest = hashlib.sha256(path.read_bytes() + info_text).hexdigest()
    return Upright(net, info["min_confidence"], info, digest)


def to_display(image: np.ndarray, order: DisplayOrder) -> np.ndarray:
    """A (y, x[, c]) image in ``order``'s display order (contiguous)."""
    return np.ascontiguousarray(order.to_display(image[None])[0])


def to_stored(image: np.ndarray, order: DisplayOrder) -> np.ndarray:
    """The inverse of :func:`to_display`: a display-order (y, x[, c]) image as stored."""
    return order.to_stored(image[None])[0]


def results_to_stored(
    results: dict[str, ConceptResult], order: DisplayOrder, guess: UprightGuess
) -> dict[str, ConceptResult]:
    """Map 2D results segmented in ``order`` back to the stored image, in place; each result
    records the guess as ``extra["upright"]``."""
    for result in results.values():
        if not order.identity:
            map_masks(result, lambda a: to_stored(a, order))
        result.extra["upright"] = {
            **asdict(guess.order),
            "confidence": guess.confidence,
            "applied": not order.identity,
        }
    return results


def describe(facts: dict) -> str:
    """``extra["upright"]`` in words: the steps applied ("transpose + flip rows") or "as stored"."""
    if not facts.get("applied"):
        return "as stored"
    steps = [k for k in ("transpose", "flip_rows", "flip_cols") if facts.get(k)]
    return " + ".join(k.replace("_", " ") for k in steps)
