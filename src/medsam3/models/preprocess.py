"""Modality-aware intensity pre-processing: any 2D plane -> uint8 RGB for the image encoders.

- CT (Hounsfield units): a window chosen from the concept / body part (lung, bone, brain,
  soft tissue, ...); the soft-tissue window is the default.
- MRI and other single-channel float data: 0.5-99.5 percentile normalisation per plane.
- uint8 RGB / grayscale (photographs, endoscopy, dermoscopy, fundus, microscopy, x-ray,
  ultrasound): passed through (grayscale replicated to three channels).
"""

from __future__ import annotations

import numpy as np

# (center, width) in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
}
_WINDOW_KEYWORDS: dict[str, tuple[str, ...]] = {
    "lung": ("lung", "airway", "trachea", "bronch", "nodule", "covid", "pulmonary", "emphysema"),
    "bone": (
        "bone",
        "rib",
        "vertebra",
        "skull",
        "femur",
        "pelvis",
        "spine",
        "sacrum",
        "costal",
        "clavicle",
        "scapula",
        "humerus",
        "sternum",
        "hip",
    ),
    "brain": ("brain", "hemorrhage", "haemorrhage", "ventricle of brain"),
    "liver": ("liver", "hepatic"),
}


def ct_window_for(concept: str | None) -> tuple[float, float]:
    """Pick a CT window (center, width) in HU for a concept phrase; soft tissue by default."""
    phrase = (concept or "").lower()
    for name, words in _WINDOW_KEYWORDS.items():
        if any(w in phrase for w in words):
            return CT_WINDOWS[name]
    return CT_WINDOWS["soft_tissue"]


def group_by_ct_window(
    concepts: list[str], modality: str | None
) -> dict[tuple[float, float] | None, list[str]]:
    """Concepts that share one pre-processed plane, in input order.

    On CT each concept is shown in its own window (:func:`ct_window_for`), so concepts are
    grouped by window and each group is encoded once; any other modality is one group.

    Args:
        concepts: phrases.
        modality: the image's modality ("ct" groups by window).

    Returns:
        (center, width) in HU -> phrases for CT; ``{None: concepts}`` otherwise.
    """
    if (modality or "").lower() != "ct":
        return {None: list(concepts)}
    groups: dict[tuple[float, float] | None, list[str]] = {}
    for concept in concepts:
        groups.setdefault(ct_window_for(concept), []).append(concept)
    return groups


def apply_window(plane: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map [center - width/2, center + width/2] linearly to uint8 [0, 255] (clipped)."""
    lo = center - width / 2.0
    scaled = (plane.astype(np.float32) - lo) / max(width, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def percentile_normalise(plane: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the [low, high] percentiles of the plane to uint8 [0, 255] (clipped)."""
    data = plane.astype(np.float32)
    lo, hi = np.percentile(data, [low, high])
    if hi <= lo:
        return np.zeros(data.shape, np.uint8)
    return (np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint8_rgb(
    plane: np.ndarray,
    modality: str | None = None,
    concept: str | None = None,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Convert one 2D plane to uint8 RGB, modality-aware.

    Args:
        plane: (y, x) or (y, x, c) array, any numeric dtype (CT in HU).
        modality: "ct" windows by concept; other float data are percentile-normalised.
        concept: phrase used to choose the CT window.
        intensity_range: (lo, hi) to map to [0, 255] instead of per-plane percentiles, so that
            every slice of one volume is scaled alike (see :func:`volume_intensity_range`).

    Returns:
        (y, x, 3) uint8 array.
    """
    if plane.ndim == 3:
        rgb = plane[..., :3] if plane.shape[-1] >= 3 else np.repeat(plane[..., :1], 3, axis=-1)
        if rgb.dtype != np.uint8:
            rgb = percentile_normalise(rgb)
        return np.ascontiguousarray(rgb)
    if (modality or "").lower() == "ct":
        gray = apply_window(plane, *ct_window_for(concept))
    elif plane.dtype == np.uint8:
        gray = plane
    elif intensity_range is not None:
        lo, hi = intensity_range
        gray = apply_window(plane, (lo + hi) / 2.0, hi - lo)
    else:
        gray = percentile_normalise(plane)
    return np.repeat(gray[..., None], 3, axis=-1)


def volume_intensity_range(
    volume: np.ndarray, low: float = 0.5, high: float = 99.5
) -> tuple[float, float]:
    """Percentile range over a whole (non-CT) volume, for slice-consistent scaling.

    Args:
        volume: (z, y, x) array.

    Returns:
        (lo, hi) intensities; foreground-biased by ignoring exact zeros (skull-stripped MRI).
    """
    data = volume[volume != 0] if np.any(volume != 0) else volume.ravel()
    lo, hi = np.percentile(data.astype(np.float32), [low, high])
    return float(lo), float(hi)
