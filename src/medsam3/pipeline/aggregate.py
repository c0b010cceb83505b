"""The report job: combine per-study parts and statuses into the Parquet reports and HTML.

Tables in the reports folder (``Layout.reports``): studies, segments, metrics (with a
ground-truth table), failures, provenance, agent_trace (empty when the agent is off), plus
``report.html``. Parts are streamed with pyarrow
datasets and metrics are computed in parallel on a Dask cluster (LocalCluster, or SLURM via
dask-jobqueue), so a 100k-study cohort never sits in one pandas frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from medsam3.io.atomic import write_json_atomic
from medsam3.io.common import concept_slug, environment_cause, scrub_paths
from medsam3.io.zarr_store import read_label, read_study
from medsam3.models.preprocess import to_uint8_rgb
from medsam3.pipeline.cluster import dask_client
from medsam3.pipeline.layout import Layout
from medsam3.pipeline.settings import ReportSettings
from medsam3.pipeline.status import StudyStatus, failure_rows, study_records
from medsam3.reports.figures import TRUTH_RGB, Overlay, concept_colour, thumbnail_png
from medsam3.reports.html import (
    MAX_STUDY_ROWS,
    RunInfo,
    best_worst,
    read_table,
    save_figures,
    write_html_report,
)
from medsam3.reports.metrics import load_ground_truth, read_truth_mask, segmentation_metrics
from medsam3.reports.provenance import iso_time
from medsam3.reports.schemas import (
    AGENT_TRACE_SCHEMA,
    FAILURES_SCHEMA,
    METRICS_SCHEMA,
    PROVENANCE_SCHEMA,
    SEGMENTS_SCHEMA,
    STUDIES_SCHEMA,
)
from medsam3.reports.tables import (
    aggregate_parts,
    failure_row,
    metrics_row,
    study_row,
    write_parquet_atomic,
)

log = logging.getLogger("medsam3.pipeline.aggregate")
PRESENCE_THRESHOLD = 0.5


def studies_rows(ingest: list[StudyStatus], segment: list[StudyStatus]) -> list[dict]:
    """Rows of the studies table: one per ingest record, with the segment outcome folded in.

    Args:
        ingest: ingest records, in cohort order.
        segment: segment records (any order).

    Returns:
        Rows (``STUDIES_SCHEMA``) with status "failed" (ingest or segment failed), "ok"
        (segmented) or "ingested" (no segment record yet), and the first error.
    """
    seg = {r.study_id: r for r in segment}
    rows = []
    for rec in ingest:
        done = seg.get(rec.study_id)
        failed = rec.status != "ok" or (done is not None and done.status == "failed")
        status = "failed" if failed else ("ok" if done else "ingested")
        error = rec.error or (done.error if done else None)
        rows.append(study_row(rec.study_id, status, error, rec.image, _settled(done)))
    return rows


def _settled(record: StudyStatus | None) -> dict | None:
    """The studies columns a segment record settled: modality, upright step, question and
    answer (None without a record)."""
    if record is None:
        return None
    keys = ("modality", "modality_source", "modality_predicted", "modality_confidence")
    keys += ("upright", "upright_confidence", "question", "answer")
    return {k: getattr(record, k) for k in keys}


def metrics_for(truth: dict, outdir: str, tolerance_mm: float) -> dict:
    """Metrics row for one ground-truth row (runs on a Dask worker).

    Args:
        truth: a row of :func:`medsam3.reports.metrics.load_ground_truth` as a dict.
        outdir: output root holding the Zarr stores.
        tolerance_mm: NSD tolerance.

    Returns:
        ``{"row": metrics row}`` or ``{"failure": failures row}``.
    """
    sid, concept = truth["study_id"], truth["concept"]
    try:
        store = Layout(outdir).store(sid)
        image = read_study(store)
        pred, attrs = read_label(store, concept_slug(concept))
        gt = read_truth_mask(truth, like=image)
        spacing = image.spacing if image.kind == "volume" else image.spacing[:2]
        values = segmentation_metrics(
            pred > 0, gt > 0, spacing if image.kind != "video" else None, tolerance_mm
        )
        threshold = attrs.get("presence_threshold", PRESENCE_THRESHOLD)
        row = metrics_row(sid, concept, values, attrs["presence"], threshold, tolerance_mm)
        return {"row": row}
    except Exception as exc:  # noqa: BLE001 - recorded in failures.parquet
        if environment_cause(exc):  # fails the report job: it is redone by the next run
            raise
        message = scrub_paths(f"{type(exc).__name__}: {exc}", keep=[outdir])
        return {"failure": failure_row(sid, "metrics", message)}


def _truth_rows(table: str) -> list[dict]:
    """The rows of the ground-truth table ("" for none)."""
    return load_ground_truth(table).to_dict("records") if table else []


def _metrics(settings: ReportSettings) -> tuple[list[dict], list[dict]]:
    """Metrics rows of every ground-truth row (on the Dask cluster), and the failures."""
    truths = _truth_rows(settings.ground_truth)
    if not truths:
        return [], []
    with dask_client({"dask": settings.dask}) as client:
        futures = client.map(
            metrics_for,
            truths,
            outdir=settings.outdir,
            tolerance_mm=float(settings.nsd_tolerance_mm),
            pure=False,
        )
        results = client.gather(futures)
    return [r["row"] for r in results if "row" in r], [
        r["failure"] for r in results if "failure" in r
    ]


def _plane_index(*masks: np.ndarray) -> int | None:
    """The slice/frame where the masks have the most foreground (the middle when empty)."""
    if masks[0].ndim == 2:
        return None
    total = sum((m > 0).reshape(m.shape[0], -1).sum(1) for m in masks)
    return int(np.argmax(total)) if total.any() else masks[0].shape[0] // 2


def _case(image, caption: str, masks: dict, truth: dict) -> Overlay:
    """An Overlay of the plane where the masks (or the truth) are largest."""
    k = _plane_index(*masks.values(), *truth.values())
    plane = image.array if k is None else image.array[k]
    first = next(iter(masks), None)
    return Overlay(
        caption,
        to_uint8_rgb(plane, image.modality, first),
        {c: m if k is None else m[k] for c, m in masks.items()},
        {c: m if k is None else m[k] for c, m in truth.items()},
    )


def _truth(rows: list[dict], image) -> dict:
    """Ground-truth masks of a study's truth rows, by concept (unreadable ones left out: the
    metrics table records why)."""
    truth = {}
    for row in rows:
        try:
            truth[row["concept"]] = read_truth_mask(row, like=image)
        except Exception as exc:  # noqa: BLE001 - recorded by the metrics step
            if environment_cause(exc):
                raise
    return truth


def _study_masks(store: Path, concepts: list[str]) -> tuple[dict, float | None]:
    """The stored labels of a study's concepts, and the presence threshold they were made at."""
    masks, threshold = {}, None
    for phrase in concepts:
        label, attrs = read_label(store, concept_slug(phrase))
        masks[phrase] = label
        threshold = attrs.get("presence_threshold", threshold)
    return masks, threshold


def _pictures(layout: Layout, truths: list[dict]) -> tuple[list[Overlay], RunInfo]:
    """Best and worst Dice overlays, and a thumbnail of every segmented study (up to the
    page's limit), with the presence threshold the labels were made at."""
    segments = read_table(layout.reports, "segments", ["study_id", "concept", "level"])
    by_study: dict[str, list[str]] = {}
    if segments is not None:
        for r in segments[segments["level"] == "concept"].itertuples():
            by_study.setdefault(r.study_id, []).append(r.concept)
    truth_rows: dict[str, list[dict]] = {}
    for row in truths:
        truth_rows.setdefault(row["study_id"], []).append(row)
    thumbs, threshold = {}, None
    for sid, concepts in list(by_study.items())[:MAX_STUDY_ROWS]:
        store = layout.store(sid)
        image = read_study(store)
        masks, threshold = _study_masks(store, concepts)
        truth = _truth([r for r in truth_rows.get(sid, []) if r["concept"] in masks], image)
        case = _case(image, sid, masks, truth)
        legend = [(_hex(concept_colour(concepts, c)), f"prediction: {c}") for c in sorted(masks)]
        legend += [(_hex(TRUTH_RGB), f"ground truth: {c}") for c in sorted(truth)]
        thumbs[sid] = (thumbnail_png(case), legend)
    overlays = []
    for sid, concept, dice in best_worst(layout.reports):
        store = layout.store(sid)
        image = read_study(store)
        masks, _ = _study_masks(store, [concept])
        truth = _truth([r for r in truth_rows.get(sid, []) if r["concept"] == concept], image)
        overlays.append(_case(image, f"{sid} / {concept}: Dice {dice:.3f}", masks, truth))
    run = RunInfo(iso_time(time.time()), "", PRESENCE_THRESHOLD if threshold is None else threshold)
    run.thumbnails = thumbs
    return overlays, run


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def write_reports(
    ingest_files: list[str], segment_files: list[str], settings: ReportSettings
) -> Path:
    """Write every report table, ``report.html`` and the report timing.

    Args:
        ingest_files: ingest status files (one per study, cohort order).
        segment_files: segment shard status files.
        settings: output folder, NSD tolerance, Dask cluster and ground-truth table ("": none).

    Returns:
        The reports folder.
    """
    start = time.time()
    layout = settings.layout
    ingest, segment = study_records(ingest_files), study_records(segment_files)
    write_parquet_atomic(studies_rows(ingest, segment), layout.table("studies"), STUDIES_SCHEMA)
    seg_parts = [layout.segments_part(r.study_id) for r in segment if r.status == "ok"]
    aggregate_parts(seg_parts, layout.table("segments"), SEGMENTS_SCHEMA)
    trace_parts = [layout.agent_trace_part(r.study_id) for r in segment if r.status == "ok"]
    trace_parts = [p for p in trace_parts if p.is_file()]  # written only with the agent on
    aggregate_parts(trace_parts, layout.table("agent_trace"), AGENT_TRACE_SCHEMA)
    prov_parts = layout.provenance_parts()
    aggregate_parts(prov_parts, layout.table("provenance"), PROVENANCE_SCHEMA)
    metrics, metric_failures = _metrics(settings) if settings.ground_truth else ([], [])
    write_parquet_atomic(metrics, layout.table("metrics"), METRICS_SCHEMA)
    failures = failure_rows(ingest) + failure_rows(segment) + metric_failures
    write_parquet_atomic(failures, layout.table("failures"), FAILURES_SCHEMA)
    truths = _truth_rows(settings.ground_truth)
    overlays, run = _pictures(layout, truths)
    run.cohort = Path(settings.cohort).name if settings.cohort else "-"
    write_html_report(layout.reports, layout.html_report(), overlays, run)
    save_figures(layout.reports, layout.report_figures(), overlays)
    write_json_atomic(layout.report_timing(), {"seconds": time.time() - start})
    log.info(
        "reports: %d studies, %d segment parts, %d metrics rows, %d failures",
        len(ingest),
        len(seg_parts),
        len(metrics),
        len(failures),
    )
    return layout.reports
