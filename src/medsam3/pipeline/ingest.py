"""Ingest one study: read its source, write the Zarr store, record the outcome as status JSON.

Bad input never raises out of :func:`ingest_study`: the reason is recorded in the status file
(``status: failed``), which the report step turns into ``reports/failures.parquet``, and the
rest of the cohort goes on.
"""

from __future__ import annotations

import logging
import time
import traceback

from medsam3._version import __version__
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
        with the stored image's description, or "failed" with the reason.
    """
    start = time.time()
    record = StudyStatus(study.study_id, "ingest")
    try:
        record.image = _read_and_write(study, settings)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the cohort goes on
        record.status = "failed"
        record.error = hide_source_path(_describe(exc), study.path, settings.report_paths)
        log.debug("ingest %s failed:\n%s", study.study_id, traceback.format_exc())
    record.seconds = round(time.time() - start, 3)
    status = JobStatus("ingest", study.study_id, [record])
    write_status(settings.layout.status("ingest", study.study_id), status)
    log.info(
        "ingest %s: %s%s",
        study.study_id,
        record.status,
        f" ({record.error})" if record.error else "",
    )
    return record


def _read_and_write(study: Study, settings: IngestSettings) -> ImageInfo:
    image = read_source(study.path, modality=study.modality)
    attrs = {"study_id": study.study_id, "medsam3_version": __version__}
    write_study(settings.layout.store(study.study_id), image, attrs=attrs)
    return ImageInfo.of(image)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ReadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
