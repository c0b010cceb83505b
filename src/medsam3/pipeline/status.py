"""Per-study status records (JSON written by each job) and the failures they carry."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def read_statuses(paths: Iterable[str | Path]) -> list[dict]:
    """Read status JSON files (ingest: one per study; segment: one per shard)."""
    return [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]


def study_records(statuses: Iterable[dict]) -> list[dict]:
    """Flatten shard statuses into per-study records (ingest statuses pass through)."""
    records = []
    for status in statuses:
        for record in status.get("studies", [status]):
            records.append({"stage": status.get("stage"), **record})
    return records


def failure_rows(statuses: Iterable[dict]) -> list[dict]:
    """Rows of the failures table (``FAILURES_SCHEMA``): failed studies and failed exports."""
    from medsam3.reports.tables import failure_row

    rows = []
    for record in study_records(statuses):
        if record.get("status") == "failed":
            rows.append(failure_row(record["study_id"], record["stage"], record["error"]))
        for error in record.get("export_errors", []):
            rows.append(failure_row(record["study_id"], "export", error))
    return rows


def write_ingest_reports(status_files: Iterable[str | Path], outdir: str | Path) -> None:
    """Write ``reports/failures.parquet`` from the ingest statuses (the ingest target's report).

    Args:
        status_files: ``{outdir}/status/ingest/*.json``.
        outdir: output root.
    """
    from medsam3.reports.tables import FAILURES_SCHEMA, write_parquet_atomic

    rows = failure_rows(read_statuses(status_files))
    write_parquet_atomic(rows, Path(outdir, "reports", "failures.parquet"), FAILURES_SCHEMA)
