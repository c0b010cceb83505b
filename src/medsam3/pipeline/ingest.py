"""Ingest one study: read its source, write the Zarr store, record the outcome as status JSON.

Bad input never raises out of :func:`ingest_study`: the reason is recorded in the status file
(``status: failed``), which the report step turns into ``reports/failures.parquet``, and the
rest of the cohort goes on. A failing machine is not bad input: an environment error (disk
full, read-only or unwritable folder, I/O error, out of memory) raises
:class:`~medsam3.io.common.EnvironmentFailure` and writes no status, so the job fails, Snakemake
retries it, and a rerun redoes the study.
"""

from __future__ import annotations

import logging
import time
import traceback

from medsam3._version import __version__
from medsam3.io.common import EnvironmentFailure, environment_cause
from medsam3.io.image import ImageInfo
from medsam3.io.read import ReadError, read_source
from medsam3.io.zarr_store import write_study
from medsam3.pipeline.cohort import Study
from medsam3.pipeline.settings import IngestSettings
from medsam3.pipeline.status import JobStatus, StudyStatus, hide_source_path, write_status

log = logging.getLogger("medsam3.pipeline.ingest")


def ingest_study(study: Study, settings: IngestSettings) -> StudyStatus:
    """Read one study and write its Zarr store; never raises for bad input.

    Args:
        study: validated cohort row (its concepts are not used).
        settings: output folder and whether error messages may keep source paths.

    Returns:
        The study's record, also written as ``Layout.status("ingest", study_id)``: status "ok"
        with the stored image's description (its warnings included), or "failed" with the
        reason.

    Raises:
        EnvironmentFailure: the machine failed (the message hides source paths); no status is
            written, so the study is redone by the next run.
    """
    start = time.time()
    record = StudyStatus(study.study_id, "ingest")
    try:
        record.image = _read_and_write(study, settings)
    except Exception as exc:  # noqa: BLE001 - every input failure is recorded, the cohort goes on
        reason = _hide(study, settings, _describe(exc))
        if environment_cause(exc):
            raise EnvironmentFailure(
                f"ingest {study.study_id}: {reason}; the study is not recorded as failed: fix "
                "the machine (space, permissions, memory) and run the workflow again"
            ) from None
        record.status, record.error = "failed", reason
        trace = _hide(study, settings, traceback.format_exc())
        log.debug("ingest %s failed:\n%s", study.study_id, trace)
    record.seconds = round(time.time() - start, 3)
    status = JobStatus("ingest", study.study_id, [record])
    write_status(settings.layout.status("ingest", study.study_id), status)
    log.info(
        "ingest %s: %s%s",
        study.study_id,
        record.status,
        f" ({record.error})" if record.error else "",
    )
    for warning in record.image.warnings if record.image else ():
        log.warning("ingest %s: %s", study.study_id, warning)
    return record


def _hide(study: Study, settings: IngestSettings, message: str) -> str:
    """A message with the study's source paths hidden (unless ``report_paths``)."""
    return hide_source_path(message, study.path, settings.report_paths, settings.outdir)


def _read_and_write(study: Study, settings: IngestSettings) -> ImageInfo:
    image = read_source(study.path, modality=study.modality)
    image.warnings = [_hide(study, settings, w) for w in image.warnings]
    attrs = {"study_id": study.study_id, "medsam3_version": __version__}
    write_study(settings.layout.store(study.study_id), image, attrs=attrs)
    return ImageInfo.of(image)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ReadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
