"""Per-study status records (JSON written by each job) and their collection into Parquet."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medsam3.io.atomic import atomic_path

FAILURE_COLUMNS = pa.schema(
    [
        pa.field("study_id", pa.string(), metadata={"description": "study id (no identifiers)"}),
        pa.field("stage", pa.string(), metadata={"description": "ingest, segment or report"}),
        pa.field("concept", pa.string(), metadata={"description": "concept, when per-concept"}),
        pa.field("error", pa.string(), metadata={"description": "what went wrong and the fix"}),
    ]
)


def read_statuses(paths: Iterable[str | Path]) -> list[dict]:
    """Read status JSON files (one per study and stage)."""
    return [json.loads(Path(p).read_text()) for p in paths]


def failure_rows(statuses: Iterable[dict]) -> list[dict]:
    """Failure rows (study_id, stage, concept, error) from status records."""
    rows = []
    for status in statuses:
        if status.get("status") == "failed":
            rows.append({k: status.get(k) for k in ("study_id", "stage", "concept", "error")})
        for failure in status.get("failures", []):  # per-concept failures inside a study
            rows.append({"study_id": status["study_id"], "stage": status.get("stage"), **failure})
    return rows


def write_table_atomic(rows: list[dict], path: str | Path, schema: pa.Schema) -> Path:
    """Write rows as a Parquet table with a fixed schema (columns exist even when empty)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def write_ingest_reports(status_files: Iterable[str | Path], outdir: str | Path) -> None:
    """Write ``reports/failures.parquet`` from the ingest statuses (the ingest target's report).

    Args:
        status_files: ``{outdir}/status/ingest/*.json``.
        outdir: output root.
    """
    statuses = read_statuses(status_files)
    write_table_atomic(
        failure_rows(statuses), Path(outdir, "reports", "failures.parquet"), FAILURE_COLUMNS
    )
