"""Job status files: one shape for every stage, written and read here only.

Each job writes one :class:`JobStatus` as JSON to ``Layout.status(stage, job)``: an ingest job
for its study (one record), a segment job for its shard (one record per study). The report
job reads them back, and the failures table is built from their records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medsam3.io.atomic import write_json_atomic
from medsam3.io.image import ImageInfo
from medsam3.reports.schemas import FAILURES_SCHEMA
from medsam3.reports.tables import failure_row, write_parquet_atomic
from medsam3.types import PathLikeStr


@dataclass
class StudyStatus:
    """What one stage did with one study.

    Attributes:
        study_id: pseudonymous study id.
        stage: "ingest" or "segment".
        status: "ok", "failed", or "skipped" (segment: the study's ingest failed).
        error: why it failed (source paths hidden unless ``report_paths``), else None.
        seconds: wall time spent on the study.
        image: ingest: the stored image's description (None when it failed).
        concepts: segment: the study's concepts.
        computed: segment: the concepts segmented by this job (the others were already stored).
        export_errors: segment: "<concept>: <error>" for each mask export that failed.
    """

    study_id: str
    stage: str
    status: str = "ok"
    error: str | None = None
    seconds: float | None = None
    image: ImageInfo | None = None
    concepts: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    export_errors: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, fields: dict) -> StudyStatus:
        """Rebuild from ``dataclasses.asdict`` output read back from JSON."""
        image = fields.get("image")
        return cls(**{**fields, "image": ImageInfo.from_dict(image) if image else None})


@dataclass
class JobStatus:
    """The content of one status file.

    Attributes:
        stage: "ingest" or "segment".
        job: the study id (ingest) or the shard name (segment).
        studies: one record per study of the job.
        model_load_s: segment: seconds spent loading the model.
    """

    stage: str
    job: str
    studies: list[StudyStatus]
    model_load_s: float | None = None


def write_status(path: PathLikeStr, status: JobStatus) -> Path:
    """Write a status file atomically (sorted keys, indented JSON)."""
    return write_json_atomic(path, asdict(status))


def read_status(path: PathLikeStr) -> JobStatus:
    """Read a status file written by :func:`write_status`."""
    fields = json.loads(Path(path).read_text(encoding="utf-8"))
    studies = [StudyStatus.from_dict(s) for s in fields.pop("studies")]
    return JobStatus(studies=studies, **fields)


def study_records(paths: Iterable[PathLikeStr]) -> list[StudyStatus]:
    """The per-study records of status files, in file order."""
    return [record for path in paths for record in read_status(path).studies]


def hide_source_path(message: str, source: str, report_paths: bool = False) -> str:
    """Replace a study's source path in a message unless paths may be reported.

    Hospital paths often embed patient names or record numbers, so status records and reports
    show ``<source>`` (config ``report_paths: false``).

    Args:
        message: an error message.
        source: the study's source path (cohort ``path``).
        report_paths: keep the path.

    Returns:
        The message with the path and its file name replaced.
    """
    if report_paths:
        return message
    return message.replace(source, "<source>").replace(Path(source).name, "<source>")


def failure_rows(records: Iterable[StudyStatus]) -> list[dict]:
    """Rows of the failures table (``FAILURES_SCHEMA``): failed studies and failed exports."""
    rows = []
    for record in records:
        if record.status == "failed":
            rows.append(failure_row(record.study_id, record.stage, record.error))
        for error in record.export_errors:
            rows.append(failure_row(record.study_id, "export", error))
    return rows


def write_ingest_failures(status_files: Iterable[PathLikeStr], path: PathLikeStr) -> Path:
    """Write the failures table of the ``ingest`` target from its status files.

    Args:
        status_files: ``Layout.status("ingest", study_id)`` of every study.
        path: ``Layout.ingest_failures()``.

    Returns:
        The written path.
    """
    rows = failure_rows(study_records(status_files))
    return write_parquet_atomic(rows, path, FAILURES_SCHEMA)
