"""The self-contained HTML summary of a reports folder, and its figures one by one.

Figures are drawn with matplotlib's object API (no pyplot state, any backend) and embedded as
base64 PNGs, so the HTML file has no external references. ``save_figures`` writes the same
figures as separate PNGs for Snakemake's ``report(...)``.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from medsam3.io.atomic import atomic_path, write_text_atomic
from medsam3.reports.schemas import TABLE_FILES
from medsam3.types import PathLikeStr

Overlay = tuple[str, np.ndarray, np.ndarray]


def _read(reports_dir: Path, table: str, columns: list[str]):
    """Columns of a report table as a pandas frame, or None when the file is missing/empty."""
    path = reports_dir / TABLE_FILES[table][0]
    if not path.is_file():
        return None
    df = pq.read_table(path, columns=columns).to_pandas()
    return df if len(df) else None


def _short(phrase: str, limit: int = 40) -> str:
    """A concept phrase cut to fit a plot's axis labels."""
    return phrase if len(phrase) <= limit else phrase[: limit - 3] + "..."


def size_figure(reports_dir: PathLikeStr) -> Figure | None:
    """Box plots of volume (ml, volumes) and area (mm^2, images) per concept.

    Args:
        reports_dir: folder with segments.parquet.

    Returns:
        A matplotlib Figure, or None when no concept was found in any study.
    """
    df = _read(
        Path(reports_dir), "segments", ["concept", "level", "voxels", "volume_ml", "area_mm2"]
    )
    if df is None:
        return None
    df = df[(df["level"] == "concept") & (df["voxels"] > 0)]
    panels = [
        (c, u)
        for c, u in (("volume_ml", "volume (ml)"), ("area_mm2", "area (mm²)"))
        if df[c].notna().any()
    ]
    if not panels:
        return None
    fig = Figure(figsize=(6.5 * len(panels), 0.45 * df["concept"].nunique() + 2.2))
    for ax, (col, label) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        sub = df[df[col].notna()]
        groups = sorted(sub.groupby("concept")[col])
        ax.boxplot(
            [g.to_numpy() for _, g in groups],
            orientation="horizontal",
            tick_labels=[f"{_short(name)} (n={len(g)})" for name, g in groups],
        )
        ax.set_xlabel(label)
        ax.set_title(f"{label.split(' ')[0]} per concept (studies where present)")
    fig.tight_layout()
    return fig


def dice_figure(reports_dir: PathLikeStr) -> Figure | None:
    """Dice per concept (box plot with the points), when a metrics table exists.

    Args:
        reports_dir: folder with metrics.parquet.

    Returns:
        A matplotlib Figure, or None without metrics.
    """
    df = _read(Path(reports_dir), "metrics", ["concept", "dice"])
    if df is None:
        return None
    groups = sorted(df.dropna(subset=["dice"]).groupby("concept")["dice"])
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
    ax.set_title("Dice per concept")
    fig.tight_layout()
    return fig


def overlay_figure(overlays: list[Overlay]) -> Figure | None:
    """A row of images with their masks overlaid in colour.

    Args:
        overlays: (caption, image, mask) with image (y, x) grey or (y, x, 3) uint8 RGB and mask
            (y, x) (nonzero = concept). Captions must not hold patient identifiers.

    Returns:
        A matplotlib Figure, or None for no overlays.
    """
    if not overlays:
        return None
    n = len(overlays)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (caption, image, mask) in zip(axes, overlays, strict=False):
        ax.imshow(image, cmap="gray" if np.asarray(image).ndim == 2 else None)
        ax.imshow(
            np.ma.masked_equal(np.asarray(mask) > 0, False),
            cmap="autumn",
            alpha=0.45,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        if np.asarray(mask).any():
            ax.contour(np.asarray(mask) > 0, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(caption, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _html_table(title: str, header: list[str], rows: list[list]) -> str:
    """An <h2> title and a table; cells are escaped; no rows gives one "none" row."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    body = body or f"<tr><td colspan={len(header)}>none</td></tr>"
    return f"<h2>{title}</h2><table><tr>{head}</tr>{body}</table>"


def _counts_html(reports_dir: Path) -> str:
    """HTML tables of studies by status and failures by stage."""
    parts = []
    for table, col, title in (
        ("studies", "status", "Studies by status"),
        ("failures", "stage", "Failures by stage"),
    ):
        df = _read(reports_dir, table, [col])
        counts = {} if df is None else df[col].value_counts().sort_index().to_dict()
        parts.append(_html_table(title, [col, "count"], [[k, v] for k, v in counts.items()]))
    return "\n".join(parts)


def _warnings_html(reports_dir: Path, examples: int = 5) -> str:
    """HTML table of ingest warnings: each kind (the text before its first ':'), how many
    studies have it and a few of them; empty when no study has a warning."""
    df = _read(reports_dir, "studies", ["study_id", "warnings"])
    if df is None:
        return ""
    pairs = df.explode("warnings").dropna(subset=["warnings"])
    if pairs.empty:
        return ""
    pairs = pairs.assign(kind=pairs["warnings"].str.split(":").str[0].str.slice(0, 80))
    rows = [
        [kind, g["study_id"].nunique(), ", ".join(sorted(set(g["study_id"]))[:examples])]
        for kind, g in sorted(pairs.groupby("kind"))
    ]
    header = ["warning", "studies", f"e.g. (first {examples}; all in studies.parquet)"]
    return _html_table("Ingest warnings", header, rows)


def _concepts_html(reports_dir: Path) -> str:
    """HTML table per concept: studies asked, studies where found, median presence.

    Lists concepts that were found nowhere too, so an empty result is visible in the report.
    """
    df = _read(reports_dir, "segments", ["concept", "level", "voxels", "presence"])
    if df is None:
        return ""
    groups = sorted(df[df["level"] == "concept"].groupby("concept"))
    rows = [
        [c, len(g), int((g["voxels"] > 0).sum()), f"{g['presence'].median():.2f}"]
        for c, g in groups
    ]
    header = ["concept", "studies", "found in", "median presence"]
    return _html_table("Concepts", header, rows)


def _png_bytes(fig: Figure) -> bytes:
    """A figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def report_figures(reports_dir: PathLikeStr, overlays: list[Overlay] | None) -> dict[str, Figure]:
    """All figures that have data, by name (sizes, dice, overlays).

    Args:
        reports_dir: the reports folder.
        overlays: optional overlay cases (see :func:`overlay_figure`).

    Returns:
        dict name -> Figure, skipping figures without data.
    """
    figs = {
        "sizes": size_figure(reports_dir),
        "dice": dice_figure(reports_dir),
        "overlays": overlay_figure(overlays or []),
    }
    return {k: v for k, v in figs.items() if v is not None}


def save_figures(
    reports_dir: PathLikeStr, outdir: PathLikeStr, overlays: list[Overlay] | None = None
) -> dict[str, Path]:
    """Save each report figure as its own PNG (for Snakemake ``report(...)``).

    Args:
        reports_dir: the reports folder.
        outdir: destination folder; files are ``<name>.png``.
        overlays: optional overlay cases.

    Returns:
        dict name -> written PNG path.
    """
    out = {}
    for name, fig in report_figures(reports_dir, overlays).items():
        with atomic_path(Path(outdir) / f"{name}.png") as tmp:
            tmp.write_bytes(_png_bytes(fig))
        out[name] = Path(outdir) / f"{name}.png"
    return out


_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
    "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px}"
    "img{max-width:100%}"
)
_TITLES = {
    "sizes": "Volume / area per concept",
    "dice": "Dice per concept",
    "overlays": "Best and worst cases",
}


def write_html_report(
    reports_dir: PathLikeStr, out_html: PathLikeStr, overlays: list[Overlay] | None = None
) -> Path:
    """Write one self-contained HTML summary (figures embedded as base64 PNG).

    Args:
        reports_dir: folder with the Parquet tables (missing tables are skipped).
        out_html: destination ``.html`` (written atomically).
        overlays: optional (caption, image, mask) cases, e.g. best and worst Dice.

    Returns:
        The destination path.
    """
    reports_dir = Path(reports_dir)
    sections = [_counts_html(reports_dir), _warnings_html(reports_dir), _concepts_html(reports_dir)]
    for name, fig in report_figures(reports_dir, overlays).items():
        data = base64.b64encode(_png_bytes(fig)).decode("ascii")
        sections.append(
            f'<h2>{_TITLES[name]}</h2><img alt="{name}" src="data:image/png;base64,{data}">'
        )
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>medsam3 report</title>"
        f"<style>{_CSS}</style></head><body><h1>medsam3 report</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
    return write_text_atomic(out_html, doc)


def best_worst(reports_dir: PathLikeStr, n: int = 2) -> list[tuple[str, str, float]]:
    """The n best and n worst (study_id, concept, dice) by Dice, for overlay picking.

    Args:
        reports_dir: folder with metrics.parquet.
        n: cases from each end.

    Returns:
        list of (study_id, concept, dice), best first then worst; empty without metrics.
    """
    df = _read(Path(reports_dir), "metrics", ["study_id", "concept", "dice"])
    if df is None:
        return []
    df = df.dropna(subset=["dice"]).sort_values("dice", ascending=False)
    picked = pd.concat([df.head(n), df.tail(n)]).drop_duplicates()
    return [(r.study_id, r.concept, float(r.dice)) for r in picked.itertuples()]
