"""The self-contained ``report.html`` of a reports folder (figures from ``reports.figures``).

Sections: the run (date, cohort, studies, config hash, backend, checkpoint, version, commit,
presence threshold), studies by status, failures with their reasons and study ids, one row per
study with a thumbnail overlay (ground truth and prediction in two colours, with a legend),
the concepts (found in how many studies, presence quantiles, why a concept found nowhere was
not found), sizes per concept by modality and kind, Dice, best and worst distinct cases, and
ingest warnings. Images are embedded as base64 PNGs: the file has no external references and
no scripts. ``save_figures`` writes the figures as PNGs for Snakemake's ``report(...)``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from medsam3.io.atomic import atomic_path, write_text_atomic
from medsam3.reports.figures import (
    Overlay,
    dice_figure,
    overlay_figure,
    png_bytes,
    size_figure,
)
from medsam3.reports.schemas import TABLE_FILES
from medsam3.types import PathLikeStr

MAX_STUDY_ROWS = 1000  # studies listed (with thumbnails) in the page; all are in the tables
FIGURES = ("sizes", "dice", "overlays")
_TITLES = {
    "sizes": "Sizes per concept, by modality and kind",
    "dice": "Dice per concept",
    "overlays": "Best and worst cases (Dice)",
}


@dataclass
class RunInfo:
    """What the page says about the run besides its tables.

    Attributes:
        date: when the report was written (UTC ISO-8601).
        cohort: the cohort table's file name.
        presence_threshold: presence at which the model reports a concept present.
        thumbnails: study id -> (PNG bytes, legend [(hex colour, label)]).
    """

    date: str
    cohort: str
    presence_threshold: float
    thumbnails: dict[str, tuple[bytes, list[tuple[str, str]]]] = field(default_factory=dict)


def read_table(reports_dir: PathLikeStr, table: str, columns: list[str] | None = None):
    """Columns of a report table as a pandas frame, or None when the file is missing/empty."""
    path = Path(reports_dir) / TABLE_FILES[table][0]
    if not path.is_file():
        return None
    names = pq.read_schema(path).names
    df = pq.read_table(path, columns=[c for c in columns or names if c in names]).to_pandas()
    return df if len(df) else None


def _table(title: str, header: list[str], rows: list[list], raw: set[int] = frozenset()) -> str:
    """An <h2> title and a table; cells are escaped except the columns in ``raw``."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v if i in raw else html.escape(str(v))}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    body = body or f"<tr><td colspan={len(header)}>none</td></tr>"
    return f"<h2>{title}</h2><table><tr>{head}</tr>{body}</table>"


def _short_digest(values) -> str:
    found = sorted({str(v) for v in values if v is not None and v == v})
    return ", ".join(v[:12] for v in found) or "-"


def _run_html(reports_dir: Path, run: RunInfo) -> str:
    """The run header: one row per fact."""
    prov = read_table(reports_dir, "provenance")
    studies = read_table(reports_dir, "studies", ["status"])
    counts = {} if studies is None else studies["status"].value_counts().to_dict()
    n = 0 if studies is None else len(studies)
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
    col = lambda c: prov[c] if prov is not None else []  # noqa: E731
    rows = [
        ["date", run.date],
        ["cohort", run.cohort],
        ["studies", f"{n} ({status})"],
        ["config sha256", _short_digest(col("config_sha256"))],
        ["backend", ", ".join(sorted(set(col("backend")))) or "-"],
        ["checkpoint sha256", _short_digest(col("checkpoint_digest"))],
        ["medsam3 version", ", ".join(sorted(set(col("package_version")))) or "-"],
        ["commit", _short_digest(col("git_commit"))],
        ["presence threshold", f"{run.presence_threshold:.2f}"],
    ]
    return _table("Run", ["", ""], rows)


def _failures_html(reports_dir: Path) -> str:
    """Failures by stage, then every failure with its study id and reason."""
    df = read_table(reports_dir, "failures", ["study_id", "stage", "error"])
    counts = {} if df is None else df["stage"].value_counts().sort_index().to_dict()
    parts = [_table("Failures by stage", ["stage", "count"], [[k, v] for k, v in counts.items()])]
    rows = [] if df is None else df[["study_id", "stage", "error"]].values.tolist()
    parts.append(_table("Failed studies and reasons", ["study", "stage", "reason"], rows))
    return "\n".join(parts)


def _size_text(row) -> str:
    """A concept row's size with its unit (mm only for physical spacing)."""
    if pd.notna(row.get("volume_ml")):
        return f"{row['volume_ml']:.1f} ml"
    if pd.notna(row.get("area_mm2")):
        return f"{row['area_mm2']:.0f} mm²"
    unit = "px" if row.get("spacing_unit") == "pixel" or pd.isna(row.get("volume_ml")) else "vx"
    return f"{int(row['voxels'])} {unit}"


def _text(value, missing: str = "-") -> str:
    """A cell's text: ``missing`` for None and NaN."""
    return missing if value is None or (isinstance(value, float) and value != value) else str(value)


def _legend_html(legend: list[tuple[str, str]]) -> str:
    return "<br>".join(
        f'<span class="sw" style="background:{c}"></span>{html.escape(label)}'
        for c, label in legend
    )


def _studies_html(reports_dir: Path, run: RunInfo) -> str:
    """One row per study (up to MAX_STUDY_ROWS): status, modality, concepts found, thumbnail."""
    studies = read_table(reports_dir, "studies")
    if studies is None:
        return ""
    segs = read_table(reports_dir, "segments")
    metrics = read_table(reports_dir, "metrics", ["study_id", "concept", "dice"])
    dice = {} if metrics is None else {(m[0], m[1]): m[2] for m in metrics.values.tolist()}
    rows = []
    for st in studies.head(MAX_STUDY_ROWS).to_dict("records"):
        found = []
        if segs is not None:
            own = segs[(segs["study_id"] == st["study_id"]) & (segs["level"] == "concept")]
            for r in own.to_dict("records"):
                text = f"{r['concept']}: {int(r['n_instances'])} inst., {_size_text(r)}"
                d = dice.get((st["study_id"], r["concept"]))
                text += f", Dice {d:.2f}" if d is not None and d == d else ""
                found.append(html.escape(text))
        thumb, legend = run.thumbnails.get(st["study_id"], (None, []))
        img = (
            f'<img class="th" alt="{html.escape(st["study_id"])}" '
            f'src="data:image/png;base64,{base64.b64encode(thumb).decode()}">'
            if thumb
            else "-"
        )
        modality = f"{_text(st.get('modality'))} ({_text(st.get('modality_source'))})"
        region = _text(st.get("body_region"))
        reason = html.escape(_text(st.get("error"), ""))
        rows.append(
            [
                html.escape(st["study_id"]),
                html.escape(str(st["status"])),
                html.escape(f"{_text(st.get('kind'))}, {modality}, {region}"),
                "<br>".join(found) or reason,
                img,
                _legend_html(legend),
            ]  # fmt: skip
        )
    note = "" if len(studies) <= MAX_STUDY_ROWS else f" (first {MAX_STUDY_ROWS} of {len(studies)})"
    header = ["study", "status", "kind, modality (source), region", "concepts / reason", "overlay",
              "legend"]  # fmt: skip
    return _table(f"Studies{note}", header, rows, raw=set(range(6)))


def _concepts_html(reports_dir: Path, threshold: float) -> str:
    """Per concept: studies, found in, presence quantiles; a concept found nowhere says why."""
    df = read_table(reports_dir, "segments", ["concept", "level", "voxels", "presence"])
    if df is None:
        return ""
    rows = []
    for concept, g in sorted(df[df["level"] == "concept"].groupby("concept")):
        q = g["presence"].quantile([0, 0.25, 0.5, 0.75, 1]).to_numpy()
        hits = int((g["voxels"] > 0).sum())
        note = ""
        if hits == 0:
            below = int((g["presence"] < threshold).sum())
            note = (
                f"no hit: presence below the threshold {threshold:.2f} in {below} of {len(g)} "
                f"studies (max {q[4]:.2f})"
                + ("; above it the mask came out empty" if below < len(g) else "")
            )
        quantiles = " / ".join(f"{v:.2f}" for v in q)
        rows.append([concept, len(g), hits, quantiles, note])
    header = ["concept", "studies", "found in", "presence min / q25 / median / q75 / max", "note"]
    return _table("Concepts", header, rows)


def _questions_html(reports_dir: Path) -> str:
    """The cohort's clinical questions and their answers (empty when no row asked one)."""
    df = read_table(reports_dir, "studies", ["study_id", "question", "answer"])
    if df is None or "question" not in df or df["question"].isna().all():
        return ""
    asked = df.dropna(subset=["question"])
    rows = [[r.study_id, r.question, r.answer or "-"] for r in asked.itertuples()]
    return _table("Questions", ["study", "question", "answer"], rows)


def _review_html(reports_dir: Path) -> str:
    """Results the agent flagged for review (critic score below its accept threshold).

    Empty when the agent was off (no critic scores); "none" when it flagged nothing.
    """
    columns = ["study_id", "concept", "level", "critic_score", "agent_rounds", "review"]
    df = read_table(reports_dir, "segments", columns)
    if df is None or "review" not in df or df["critic_score"].isna().all():
        return ""
    flagged = df[(df["level"] == "concept") & (df["review"].fillna(False).astype(bool))]
    rows = [
        [r.study_id, r.concept, f"{r.critic_score:.3f}", int(r.agent_rounds)]
        for r in flagged.sort_values(["critic_score", "study_id"]).itertuples()
    ]
    header = ["study", "concept", "critic score", "agent rounds"]
    return _table("Flagged for review by the agent", header, rows)


def _warnings_html(reports_dir: Path, examples: int = 5) -> str:
    """Ingest warnings: each kind (text before its first ':'), how many studies, a few ids."""
    df = read_table(reports_dir, "studies", ["study_id", "warnings"])
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
    return _table("Ingest warnings", header, rows)


def report_figures(reports_dir: PathLikeStr, overlays: list[Overlay] | None) -> dict[str, Figure]:
    """The figures that have data, by name (sizes, dice, overlays)."""
    reports_dir = Path(reports_dir)
    segments, studies = read_table(reports_dir, "segments"), read_table(reports_dir, "studies")
    metrics = read_table(reports_dir, "metrics", ["concept", "dice"])
    figs = {
        "sizes": None if segments is None or studies is None else size_figure(segments, studies),
        "dice": None if metrics is None else dice_figure(metrics),
        "overlays": overlay_figure(overlays or []),
    }
    return {k: v for k, v in figs.items() if v is not None}


def save_figures(
    reports_dir: PathLikeStr, outdir: PathLikeStr, overlays: list[Overlay] | None = None
) -> dict[str, Path]:
    """Save every report figure as ``<name>.png`` (for Snakemake ``report(...)``); a figure
    without data is a small picture saying so, so the files always exist.

    Returns:
        dict name -> written PNG path, for each of ``FIGURES``.
    """
    figs = report_figures(reports_dir, overlays)
    out = {}
    for name in FIGURES:
        fig = figs.get(name) or _empty_figure(f"{_TITLES[name]}: no data in this run")
        with atomic_path(Path(outdir) / f"{name}.png") as tmp:
            tmp.write_bytes(png_bytes(fig))
        out[name] = Path(outdir) / f"{name}.png"
    return out


def _empty_figure(text: str) -> Figure:
    fig = Figure(figsize=(6, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig


_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #bbb;padding:2px 8px;vertical-align:top;text-align:left}"
    "img{max-width:100%}.th{width:160px}"
    ".sw{display:inline-block;width:.9em;height:.9em;margin-right:.3em;border:1px solid #666}"
)


def write_html_report(
    reports_dir: PathLikeStr,
    out_html: PathLikeStr,
    overlays: list[Overlay] | None = None,
    run: RunInfo | None = None,
) -> Path:
    """Write one self-contained HTML summary (figures embedded as base64 PNG).

    Args:
        reports_dir: folder with the Parquet tables (missing tables are skipped).
        out_html: destination ``.html`` (written atomically).
        overlays: best and worst cases (:class:`medsam3.reports.figures.Overlay`).
        run: the run's date, cohort, presence threshold and per-study thumbnails.

    Returns:
        The destination path.
    """
    reports_dir = Path(reports_dir)
    run = run or RunInfo(date="-", cohort="-", presence_threshold=0.5)
    sections = [
        _run_html(reports_dir, run),
        _failures_html(reports_dir),
        _studies_html(reports_dir, run),
        _concepts_html(reports_dir, run.presence_threshold),
        _review_html(reports_dir),
        _questions_html(reports_dir),
    ]
    for name, fig in report_figures(reports_dir, overlays).items():
        data = base64.b64encode(png_bytes(fig)).decode("ascii")
        sections.append(
            f'<h2>{_TITLES[name]}</h2><img alt="{name}" src="data:image/png;base64,{data}">'
        )
    sections.append(_warnings_html(reports_dir))
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>medsam3 report</title>"
        f"<style>{_CSS}</style></head><body><h1>medsam3 report</h1>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    return write_text_atomic(out_html, doc)


def best_worst(reports_dir: PathLikeStr, n: int = 2) -> list[tuple[str, str, float]]:
    """The n best and n worst distinct (study_id, concept, dice) by Dice.

    Args:
        reports_dir: folder with metrics.parquet.
        n: cases from each end; with fewer than 2n cases each appears once (best first).

    Returns:
        list of (study_id, concept, dice), best first then worst, no case twice.
    """
    df = read_table(reports_dir, "metrics", ["study_id", "concept", "dice"])
    if df is None:
        return []
    df = df.dropna(subset=["dice"]).drop_duplicates(["study_id", "concept"])
    df = df.sort_values(["dice", "study_id"], ascending=[False, True])
    best = df.head(n)
    worst = df.drop(best.index).tail(n)
    picked = pd.concat([best, worst])
    return [(r.study_id, r.concept, float(r.dice)) for r in picked.itertuples()]
