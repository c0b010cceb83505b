"""The figures of ``report.html``: sizes per concept, Dice, best/worst overlays, thumbnails.

Figures are drawn with matplotlib's object API (no pyplot state, any backend); thumbnails with
Pillow. Colours: each concept keeps one colour of ``io.ngff.PALETTE`` (the Zarr label colours),
and ground truth is drawn as a yellow outline (``TRUTH_RGB``), so prediction and truth are told
apart in every overlay, with a legend.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from scipy import ndimage

from medsam3.io.ngff import PALETTE

TRUTH_RGB = (255, 215, 0)
THUMB_SIDE = 192
SIZE_COLUMNS = (  # (column, axis label, kind, spacing unit)
    ("volume_ml", "volume (ml)", "volume", "mm"),
    ("voxels", "voxels (no physical spacing)", "volume", "pixel"),
    ("area_mm2", "area (mm²)", "image", "mm"),
    ("area_px", "area (pixels; no physical spacing)", "image", "pixel"),
    ("voxels", "pixels over all frames", "video", None),
)


@dataclass
class Overlay:
    """One image plane with a concept's prediction and, when known, its ground truth.

    Attributes:
        caption: the title (no patient identifiers).
        image: (y, x) grey or (y, x, 3) uint8 plane.
        masks: concept phrase -> (y, x) predicted mask (nonzero = the concept).
        truth: concept phrase -> (y, x) ground-truth mask, for the concepts that have one.
    """

    caption: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def concept_colour(concepts: list[str], phrase: str) -> tuple[int, int, int]:
    """The colour of ``phrase`` among a report's concepts (sorted): a palette entry."""
    return PALETTE[sorted(concepts).index(phrase) % len(PALETTE)]


def png_bytes(fig: Figure) -> bytes:
    """A figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _short(phrase: str, limit: int = 40) -> str:
    return phrase if len(phrase) <= limit else phrase[: limit - 3] + "..."


def _size_panels(segments: pd.DataFrame, studies: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, frame of concept, value) per modality, kind and unit, for concepts found."""
    df = segments[(segments["level"] == "concept") & (segments["voxels"] > 0)]
    df = df.merge(studies[["study_id", "modality", "kind"]], on="study_id", how="left")
    panels = []
    for column, label, kind, unit in SIZE_COLUMNS:
        sub = df[df["kind"] == kind]
        if unit is not None:
            sub = sub[sub["spacing_unit"].fillna("mm") == unit]
        sub = sub[sub[column].notna() & (sub[column] > 0)]
        for modality, part in sorted(sub.groupby(sub["modality"].fillna("unknown"))):
            frame = part[["concept", column]].rename(columns={column: "value"})
            panels.append((f"{modality} {kind}s: {label}", frame))
    return panels


def size_figure(segments: pd.DataFrame, studies: pd.DataFrame) -> Figure | None:
    """Sizes of the concepts found, one panel per modality, kind and unit (log scale, one dot
    per study), so a small crop and a whole brain never share a box.

    Args:
        segments: the segments table (concept, level, voxels, the size columns, spacing_unit).
        studies: the studies table (study_id, modality, kind).

    Returns:
        A matplotlib Figure, or None when no concept was found in any study.
    """
    panels = _size_panels(segments, studies)
    if not panels:
        return None
    heights = [0.4 * p[1]["concept"].nunique() + 1.2 for p in panels]
    fig = Figure(figsize=(7.5, sum(heights) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (title, frame) in zip(axes, panels, strict=True):
        names = sorted(frame["concept"].unique())
        for i, name in enumerate(names):
            values = frame.loc[frame["concept"] == name, "value"].to_numpy(float)
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.plot(values, i + np.asarray(jitter), "o", alpha=0.7, ms=5)
            ax.plot([np.median(values)] * 2, [i - 0.3, i + 0.3], "k-", lw=1.5)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{_short(n)} (n={(frame['concept'] == n).sum()})" for n in names])
        ax.set_xscale("log")
        ax.set_xlabel(title.split(": ", 1)[1] + " (log scale; bar: median)")
        ax.set_title(title.split(": ", 1)[0], fontsize=10)
    fig.tight_layout()
    return fig


def dice_figure(metrics: pd.DataFrame) -> Figure | None:
    """Dice per concept (box plot with the points).

    Args:
        metrics: the metrics table (concept, dice).

    Returns:
        A matplotlib Figure, or None without Dice values.
    """
    groups = sorted(metrics.dropna(subset=["dice"]).groupby("concept")["dice"])
    if not groups:
        return None
    fig = Figure(figsize=(7, 0.45 * len(groups) + 2.2))
    ax = fig.subplots()
    ax.boxplot(
        [g.to_numpy() for _, g in groups],
        orientation="horizontal",
        tick_labels=[f"{_short(n)} (median {g.median():.2f}, n={len(g)})" for n, g in groups],
    )
    for i, (_, g) in enumerate(groups, start=1):
        ax.plot(g.to_numpy(), np.full(len(g), i), "k.", alpha=0.4)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("Dice")
    ax.set_title("Dice per concept against the ground truth")
    fig.tight_layout()
    return fig


def overlay_figure(overlays: list[Overlay]) -> Figure | None:
    """A grid of planes with predictions filled in their concept's colour and ground truth
    outlined in yellow, with a legend.

    Args:
        overlays: the cases (see :class:`Overlay`).

    Returns:
        A matplotlib Figure, or None for no overlays.
    """
    if not overlays:
        return None
    cols = min(len(overlays), 4)
    rows = -(-len(overlays) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, case in zip(axes, overlays, strict=False):
        ax.imshow(draw_overlay(case, max(case.image.shape[:2])))
        ax.set_title(case.caption, fontsize=8)
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=np.array(TRUTH_RGB) / 255, label="ground truth (outline)")]
    phrases = sorted({p for case in overlays for p in case.masks})
    handles += [
        Patch(color=np.array(concept_colour(phrases, p)) / 255, label=f"prediction: {_short(p)}")
        for p in phrases
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool mask (mask minus its erosion), thickened by one pixel."""
    edge = mask & ~ndimage.binary_erosion(mask)
    return ndimage.binary_dilation(edge) & ~ndimage.binary_erosion(mask, iterations=2)


def draw_overlay(case: Overlay, side: int = THUMB_SIDE) -> np.ndarray:
    """An RGB picture of a case scaled so its longer side is ``side`` pixels.

    Predictions are filled (40 % opacity) and outlined in their concept's colour, ground truth
    outlined in ``TRUTH_RGB`` on top.

    Returns:
        (h, w, 3) uint8.
    """
    base = np.asarray(case.image)
    base = np.repeat(base[..., None], 3, axis=-1) if base.ndim == 2 else base[..., :3]
    h, w = base.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(base.astype(np.uint8)).resize(size, Image.BILINEAR), float)
    phrases = sorted(case.masks)

    def resized(mask: np.ndarray) -> np.ndarray:
        img = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
        return np.asarray(img.resize(size, Image.NEAREST)) > 0

    for phrase in phrases:
        mask = resized(case.masks[phrase])
        colour = np.array(concept_colour(phrases, phrase), float)
        rgb[mask] = 0.6 * rgb[mask] + 0.4 * colour
        rgb[_outline(mask)] = colour
    for mask in case.truth.values():
        rgb[_outline(resized(mask))] = TRUTH_RGB
    return rgb.clip(0, 255).astype(np.uint8)


def thumbnail_png(case: Overlay, side: int = THUMB_SIDE) -> bytes:
    """:func:`draw_overlay` as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(draw_overlay(case, side)).save(buf, format="PNG")
    return buf.getvalue()
