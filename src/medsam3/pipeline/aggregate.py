"""The report job: combine per-study parts and statuses into the Parquet reports and HTML.

Tables under ``{outdir}/reports/``: studies, segments, metrics (with a ground-truth table),
failures, provenance, plus ``report.html``. Parts are streamed with pyarrow datasets and
metrics are computed in parallel on a Dask cluster (LocalCluster, or SLURM via dask-jobqueue),
so a 100k-study cohort never sits in one pandas frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from medsam3.io.atomic import write_json_atomic
from medsam3.models.inputs import concept_slug
from medsam3.pipeline.ingest import store_path
from medsam3.pipeline.status import failure_rows, read_statuses, study_records

log = logging.getLogger("medsam3.pipeline.aggregate")
PRESENCE_THRESHOLD = 0.5


def _study_rows(ingest: list[dict], segment: list[dict]) -> list[dict]:
    from medsam3.reports.tables import STUDIES_SCHEMA

    seg_status = {r["study_id"]: r for r in study_records(segment)}
    rows = []
    for rec in ingest:
        row = dict.fromkeys(STUDIES_SCHEMA.names)
        row.update(
            {
                k: rec.get(k)
                for k in (
                    "study_id",
                    "kind",
                    "modality",
                    "shape",
                    "spacing",
                    "origin",
                    "source_digest",
                )
            }
        )
        shape = rec.get("shape") or []
        row["frame_count"] = (1 if rec.get("kind") == "image" else shape[0]) if shape else None
        seg = seg_status.get(rec["study_id"], {})
        failed = rec.get("status") != "ok" or seg.get("status") == "failed"
        row["status"] = "failed" if failed else ("ok" if seg else "ingested")
        row["error"] = rec.get("error") or seg.get("error")
        rows.append(row)
    return rows


def metrics_for(truth: dict, outdir: str, tolerance_mm: float) -> dict:
    """Metrics row for one ground-truth row (runs on a Dask worker).

    Args:
        truth: a row of :func:`medsam3.reports.metrics.load_ground_truth` as a dict.
        outdir: output root holding the Zarr stores.
        tolerance_mm: NSD tolerance.

    Returns:
        ``{"row": metrics row}`` or ``{"failure": failures row}``.
    """
    from medsam3.io.zarr_store import read_label, read_study
    from medsam3.reports.metrics import read_truth_mask, segmentation_metrics
    from medsam3.reports.tables import failure_row, metrics_row

    sid, concept = truth["study_id"], truth["concept"]
    try:
        store = store_path(outdir, sid)
        image = read_study(store)
        pred, attrs = read_label(store, concept_slug(concept))
        gt = read_truth_mask(truth, like=image)
        spacing = image.spacing if image.kind == "volume" else image.spacing[:2]
        values = segmentation_metrics(
            pred > 0, gt > 0, spacing if image.kind != "video" else None, tolerance_mm
        )
        row = metrics_row(sid, concept, values, attrs["presence"], PRESENCE_THRESHOLD, tolerance_mm)
        return {"row": row}
    except Exception as exc:  # noqa: BLE001 - recorded in failures.parquet
        return {"failure": failure_row(sid, "metrics", exc)}


def _metrics(cfg: dict, ground_truth: str) -> tuple[list[dict], list[dict]]:
    from medsam3.pipeline.cluster import dask_client
    from medsam3.reports.metrics import load_ground_truth

    truths = load_ground_truth(ground_truth).to_dict("records")
    if not truths:
        return [], []
    with dask_client(cfg) as client:
        futures = client.map(
            metrics_for,
            truths,
            outdir=cfg["outdir"],
            tolerance_mm=float(cfg.get("nsd_tolerance_mm", 2.0)),
            pure=False,
        )
        results = client.gather(futures)
    return [r["row"] for r in results if "row" in r], [
        r["failure"] for r in results if "failure" in r
    ]


def _overlays(reports: Path, outdir: str) -> list:
    from medsam3.io.zarr_store import read_label, read_study
    from medsam3.models.preprocess import to_uint8_rgb
    from medsam3.reports.html import best_worst

    overlays = []
    for sid, concept, dice in best_worst(reports):
        store = store_path(outdir, sid)
        image, (label, _) = read_study(store), read_label(store, concept_slug(concept))
        k = (
            int(np.argmax(label.reshape(label.shape[0], -1).sum(1)))
            if image.kind != "image"
            else None
        )
        plane = image.array if k is None else image.array[k]
        mask = label if k is None else label[k]
        overlays.append(
            (
                f"{sid} / {concept}: Dice {dice:.3f}",
                to_uint8_rgb(plane, image.modality, concept),
                mask > 0,
            )
        )
    return overlays


def write_reports(
    ingest_files: list[str], segment_files: list[str], cfg: dict, ground_truth: str | None
) -> Path:
    """Write every report table and ``report.html``.

    Args:
        ingest_files: ingest status JSONs (one per study).
        segment_files: segment shard status JSONs.
        cfg: workflow config (outdir, nsd_tolerance_mm, dask).
        ground_truth: ground-truth table path, or None/"" for no metrics.

    Returns:
        The reports folder.
    """
    from medsam3.reports.html import write_html_report
    from medsam3.reports.tables import (
        FAILURES_SCHEMA,
        METRICS_SCHEMA,
        PROVENANCE_SCHEMA,
        SEGMENTS_SCHEMA,
        STUDIES_SCHEMA,
        aggregate_parts,
        write_parquet_atomic,
    )

    start = time.time()
    out = Path(cfg["outdir"])
    reports = out / "reports"
    ingest, segment = read_statuses(ingest_files), read_statuses(segment_files)
    write_parquet_atomic(_study_rows(ingest, segment), reports / "studies.parquet", STUDIES_SCHEMA)
    seg_parts = [
        out / "parts" / "segments" / f"{r['study_id']}.parquet"
        for r in study_records(segment)
        if r.get("status") == "ok"
    ]
    aggregate_parts(seg_parts, reports / "segments.parquet", SEGMENTS_SCHEMA)
    prov_parts = sorted((out / "parts" / "provenance").glob("*.parquet"))
    aggregate_parts(prov_parts, reports / "provenance.parquet", PROVENANCE_SCHEMA)
    metrics, metric_failures = _metrics(cfg, ground_truth) if ground_truth else ([], [])
    write_parquet_atomic(metrics, reports / "metrics.parquet", METRICS_SCHEMA)
    failures = failure_rows(ingest) + failure_rows(segment) + metric_failures
    write_parquet_atomic(failures, reports / "failures.parquet", FAILURES_SCHEMA)
    write_html_report(reports, reports / "report.html", _overlays(reports, cfg["outdir"]))
    write_json_atomic(out / "status" / "report.json", {"seconds": time.time() - start})
    log.info(
        "reports: %d studies, %d segment parts, %d metrics rows, %d failures",
        len(ingest),
        len(seg_parts),
        len(metrics),
        len(failures),
    )
    return reports
