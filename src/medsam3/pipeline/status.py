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
from medsam3.io.common import scrub_paths
from medsam3.io.image import ImageInfo
from medsam3.pipeline.layout import Layout
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
        modality: segment: the modality the study was segmented as.
        modality_source: segment: where it came from: "cohort", "dicom", "model" (recognised
            by the segmentation model) or "guess" (ingest's heuristic).
        modality_predicted: segment: the model's modality when it was asked, else None.
        modality_confidence: segment: the model's probability for it, else None.
        upright: segment: what put a 2D radiology image the right way up ("as stored" when
            nothing), None when not asked (:func:`medsam3.models.upright.describe`).
        upright_confidence: segment: the upright classifier's probability for its guess.
        question: segment: the cohort row's clinical question, else None.
        answer: segment: its answer (:func:`medsam3.agent.questions.answer_question`).
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
    modality: str | None = None
    modality_source: str | None = None
    modality_predicted: str | None = None
    modality_confidence: float | None = None
    upright: str | None = None
    upright_confidence: float | None = None
    question: str | None = None
    answer: str | None = None

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


def hide_source_path(
    message: str, source: str, report_paths: bool = False, outdir: str | None = None
) -> str:
    """Replace source paths in a message unless paths may be reported.

    Hospital paths often embed patient names or record numbers, so status records, logs and
    reports show ``<source>`` (config ``report_paths: false``). Whole path strings are
    replaced, never parts of words or numbers: a folder named "2" leaves "found 2 series".

    Args:
        message: an error message.
        source: the study's source path (cohort ``path``).
        report_paths: keep the paths.
        outdir: the output folder, whose paths stay (they name no patient).

    Returns:
        The message with the source, the files a ``.dcmlist`` source lists, any path below
        them and any other absolute path outside ``outdir`` replaced by ``<source>``.
    """
    if report_paths:
        return message
    return scrub_paths(message, source_strings(source), [outdir] if outdir else [])


def source_strings(source: str) -> list[str]:
    """The path strings of a source that messages may quote.

    Args:
        source: a cohort ``path`` (absolute).

    Returns:
        The path as given and resolved, and for a ``.dcmlist`` each listed file as written
        and resolved against the list's folder, with their folders.
    """
    path = Path(source)
    strings = {str(source), str(path.resolve())}
    if path.suffix == ".dcmlist" and path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = line.strip()
            if entry and not entry.startswith("#"):
                full = path.parent / entry
                strings |= {entry, str(full), str(full.parent), str(Path(entry).parent)}
    return sorted(s for s in strings if s not in ("", ".", "/"))


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


def run_summary(
    layout: Layout,
    study_ids: list[str],
    failures_table: Path,
    stopped: bool = False,
    report: Path | None = None,
    examples: int = 10,
) -> str:
    """What a run did, for the end of Snakemake's output (no paths of data).

    Args:
        layout: the output layout.
        study_ids: the cohort's study ids.
        failures_table: the failures table the run writes (reports/failures.parquet, or
            reports/ingest_failures.parquet for the ``ingest`` target).
        stopped: the run stopped because a job failed (Snakemake's ``onerror``).
        report: the report the run wrote (named at the end), or None.
        examples: failed studies named with their reasons.

    Returns:
        The summary: studies ingested and segmented, failed on their input, not done yet; how
        many are ok and which failed, with why; where the failures table and the report are;
        after a failed job, what to do (environment errors fail their job: fix, then rerun).
        A run whose only failures are studies' inputs still succeeds (exit status 0).
    """
    ingest = _records(layout.status("ingest", sid) for sid in study_ids)
    shard_files = sorted(layout.status("segment", "x").parent.glob("shard-*.json"))
    cohort = set(study_ids)
    segment = {r.study_id: r for r in _records(shard_files) if r.study_id in cohort}
    failed = [r for r in ingest if r.status == "failed"]
    failed += [r for r in segment.values() if r.status == "failed"]
    failed_ids = sorted({r.study_id for r in failed})
    ok = sum(1 for r in segment.values() if r.status == "ok")
    warned = sum(1 for r in ingest if r.image is not None and r.image.warnings)
    lines = [
        f"medsam3: {len(study_ids)} studies: {len(ingest)} ingested, "
        f"{ok} segmented, {len(failed_ids)} failed on their input, "
        f"{len(study_ids) - len(ingest)} not ingested yet; {warned} with ingest warnings.",
        f"Studies ok: {ok} of {len(study_ids)}; failed: {len(failed_ids)}.",
    ]
    for record in failed[:examples]:
        reason = " ".join(str(record.error or "").split())
        lines.append(f"  failed: {record.study_id} ({record.stage}): {reason[:160]}")
    if len(failed) > examples:
        lines.append(f"  ... and {len(failed) - examples} more")
    if failed:
        lines.append(f"Input failures and their reasons: {failures_table}.")
    if report is not None and report.is_file():
        lines.append(f"Report: {report}")
    if stopped:
        lines.append(
            "The run stopped: job(s) failed (see 'Error in rule' above and the job logs). "
            "Environment errors (disk full, read-only or unwritable folder, I/O error, out of "
            "memory) fail their job instead of being recorded against a study: fix the cause "
            "and run the same command again; finished studies are kept."
        )
    elif failed:
        lines.append(
            "The run succeeded (exit status 0): only studies failed, on their input; fix or "
            "remove them and run again to retry them."
        )
    return "\n".join(lines)


def _records(paths: Iterable[PathLikeStr]) -> list[StudyStatus]:
    """The records of the status files that exist."""
    return [r for path in paths if Path(path).is_file() for r in read_status(path).studies]
