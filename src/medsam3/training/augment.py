"""Augmented views of a training plane: geometry and intensity, drawn once and cached.

Encoding a plane costs about a second on two CPU cores, so the head is not trained on fresh
augmentation at every step: each training plane gets a few seeded views, each encoded once
(:mod:`medsam3.training.views`). A view is fully described by :class:`ViewParams`, so the same
geometry is applied to the plane and to its masks and a view can be rebuilt exactly.

- geometry: a crop (zoom in, 55-100% of each side), flips, and quarter turns where the modality
  has no natural up (microscopy, histopathology, dermoscopy, endoscopy); a left-right flip of a
  radiology plane only together with a swap of "left X" and "right X" labels, and never for
  concepts whose two sides differ anatomically (heart chambers);
- intensity: gamma, contrast and brightness (other CT windows and scanners), Gaussian noise,
  blur, JPEG artefacts, and colour jitter for RGB photographs.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter

RADIOLOGY = frozenset({"ct", "mri", "xray"})
ANY_ORIENTATION = frozenset({"microscopy", "histopathology", "dermoscopy", "endoscopy"})
ASYMMETRIC_SIDED = ("atrium", "ventricle")  # "left ventricle" is not a mirrored right ventricle


@dataclass(frozen=True)
class ViewParams:
    """One augmented view (the identity when every field keeps its default).

    Attributes:
        crop: (y0, x0, y1, x1) fractions of the plane kept.
        hflip, vflip: mirror columns / rows (after the crop).
        rot90: quarter turns counter-clockwise (after the flips).
        gamma, contrast, brightness: intensity = (x ** gamma - 0.5) * contrast + 0.5 + brightness,
            on [0, 1].
        noise: Gaussian noise sigma on [0, 1].
        blur: Gaussian blur radius in pixels (0 = none).
        jpeg: JPEG quality of a re-encode (0 = none).
        hue, saturation: colour jitter of RGB planes (hue shift in turns, saturation factor).
        seed: noise seed.
    """

    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    hflip: bool = False
    vflip: bool = False
    rot90: int = 0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    jpeg: int = 0
    hue: float = 0.0
    saturation: float = 1.0
    seed: int = 0

    @property
    def changes_intensity(self) -> bool:
        """False when the view only crops, flips or turns."""
        same = ViewParams(crop=self.crop, hflip=self.hflip, vflip=self.vflip, rot90=self.rot90)
        return replace(self, seed=0) != same


IDENTITY = ViewParams()


def flip_safe(concepts: list[str]) -> bool:
    """True when a left-right mirror with a left/right label swap keeps every label right."""
    return not any(
        c.startswith(("left ", "right ")) and any(w in c for w in ASYMMETRIC_SIDED)
        for c in concepts
    )


def swap_side(concept: str) -> str:
    """ "left kidney" <-> "right kidney"; other phrases unchanged."""
    side, _, rest = concept.partition(" ")
    if side == "left":
        return f"right {rest}"
    if side == "right":
        return f"left {rest}"
    return concept


def draw_view(rng: random.Random, modality: str, concepts: list[str], color: bool) -> ViewParams:
    """Draw one random view for a plane of a modality.

    Args:
        rng: seeded generator (one per (item, view)).
        modality: manifest modality.
        concepts: every concept named for the plane (positives and hard negatives).
        color: the plane is a colour photograph (colour jitter applies).

    Returns:
        The view's parameters.
    """
    side = rng.uniform(0.55, 1.0) if rng.random() < 0.7 else 1.0
    aspect = rng.uniform(0.85, 1.15)
    h, w = min(1.0, side * aspect), min(1.0, side / aspect)
    y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
    free = modality in ANY_ORIENTATION
    radiology = modality in RADIOLOGY
    hflip = rng.random() < (0.5 if free else 0.2 if radiology and flip_safe(concepts) else 0.0)
    vflip = rng.random() < (0.5 if free else 0.15 if modality in ("ct", "mri") else 0.0)
    params = ViewParams(
        crop=(y0, x0, y0 + h, x0 + w),
        hflip=hflip,
        vflip=vflip,
        rot90=rng.randrange(4) if free else 0,
        gamma=float(np.exp(rng.uniform(-0.35, 0.35))),
        contrast=rng.uniform(0.75, 1.3),
        brightness=rng.uniform(-0.08, 0.08),
        noise=rng.uniform(0.005, 0.04) if rng.random() < 0.3 else 0.0,
        blur=rng.uniform(0.4, 1.5) if rng.random() < 0.2 else 0.0,
        jpeg=rng.randrange(30, 90) if rng.random() < 0.3 else 0,
        seed=rng.randrange(2**31),
    )
    if color and rng.random() < 0.6:
        params = replace(params, hue=rng.uniform(-0.04, 0.04), saturation=rng.uniform(0.7, 1.3))
    return params


def apply_geometry(array: np.ndarray, params: ViewParams) -> np.ndarray:
    """Crop, flip and turn a (y, x[, c]) plane or mask (exact: slicing, no resampling)."""
    h, w = array.shape[:2]
    y0, x0, y1, x1 = params.crop
    ys = slice(int(round(y0 * h)), max(int(round(y0 * h)) + 1, int(round(y1 * h))))
    xs = slice(int(round(x0 * w)), max(int(round(x0 * w)) + 1, int(round(x1 * w))))
    out = array[ys, xs]
    if params.hflip:
        out = out[:, ::-1]
    if params.vflip:
        out = out[::-1]
    if params.rot90:
        out = np.rot90(out, params.rot90)
    return np.ascontiguousarray(out)


def apply_intensity(rgb: np.ndarray, params: ViewParams) -> np.ndarray:
    """Gamma, contrast, brightness, colour, blur, noise and JPEG of a (y, x, 3) uint8 plane."""
    if not params.changes_intensity:
        return rgb
    x = rgb.astype(np.float32) / 255.0
    x = np.clip((x**params.gamma - 0.5) * params.contrast + 0.5 + params.brightness, 0, 1)
    if params.hue or params.saturation != 1.0:
        x = _jitter_colour(x, params.hue, params.saturation)
    out = (x * 255 + 0.5).astype(np.uint8)
    if params.blur:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(params.blur)))
    if params.noise:
        noise = np.random.default_rng(params.seed).normal(0, params.noise * 255, out.shape)
        out = np.clip(out + noise, 0, 255).astype(np.uint8)
    if params.jpeg:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, "JPEG", quality=params.jpeg)
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return np.ascontiguousarray(out)


def _jitter_colour(x: np.ndarray, hue: float, saturation: float) -> np.ndarray:
    """Hue shift (turns) and saturation factor of a (y, x, 3) float RGB plane in [0, 1]."""
    hsv = np.asarray(Image.fromarray((x * 255 + 0.5).astype(np.uint8)).convert("HSV"), np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue * 255) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    rgb = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb, np.float32) / 255.0


def view_masks(masks: dict[str, np.ndarray], params: ViewParams) -> dict[str, np.ndarray]:
    """A view of concept masks; a left-right mirror swaps "left X" and "right X"."""
    rename = swap_side if params.hflip else (lambda c: c)
    return {rename(c): apply_geometry(m, params) for c, m in masks.items()}


def apply_view(
    rgb: np.ndarray, masks: dict[str, np.ndarray], params: ViewParams
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A view of a plane and its masks (see :func:`view_masks` for the names).

    Args:
        rgb: (y, x, 3) uint8 plane.
        masks: concept -> (y, x) bool mask.
        params: the view.

    Returns:
        The view's plane and masks.
    """
    return apply_intensity(apply_geometry(rgb, params), params), view_masks(masks, params)
