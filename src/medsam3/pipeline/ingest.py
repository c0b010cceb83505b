"""Ingest one study: read its source, write the Zarr store, record the outcome as status JSON.

Bad input never raises out of :func:`ingest_study`: the reason is recorded in the status file
(``status: failed``), which the report step turns into ``reports/failures.parquet``, and the
rest of the cohort goes on.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from medsam3 import __version__
from medsam3.io.atomic import write_json_atomic
from medsam3.pipeline.cohort import Study

log = logging.getLogger("medsam3.pipeline.ingest")


def store_path(outdir: str | Path, study_id: str) -> Path:
    """Zarr store of a study: ``{outdir}/zarr/{study_id}.zarr``."""
    return Path(outdir) / "zarr" / f"{study_id}.zarr"


def status_path(outdir: str | Path, stage: str, study_id: str) -> Path:
    """Status JSON of a study for a stage: ``{outdir}/status/{stage}/{study_id}.json``."""
    return Path(outdir) / "status" / stage / f"{study_id}.json"


def scrub(message: str, study: Study, include_paths: bool = False) -> str:
    """Replace the study's source path in a message unless paths may be reported.

    Hospital paths often embed patient names or record numbers, so reports show ``<source>``.
    """
    if include_paths:
        return message
    return message.replace(study.path, "<source>").replace(Path(study.path).name, "<source>")


def ingest_study(study: Study, outdir: str | Path, include_paths: bool = False) -> dict:
    """Read one study and write its Zarr store; never raises for bad input.

    Args:
        study: validated cohort row.
        outdir: output root; the store goes to ``{outdir}/zarr/{study_id}.zarr``.
        include_paths: keep source paths in recorded error messages.

    Returns:
        The status record also written to ``{outdir}/status/ingest/{study_id}.json``:
        study_id, status ("ok" or "failed"), stage, error, kind, modality, shape, spacing,
        origin, direction, frame_rate, units, source_digest, warnings, seconds.
    """
    start = time.time()
    record: dict = {"study_id": study.study_id, "stage": "ingest", "status": "ok", "error": None}
    try:
        record.update(_read_and_write(study, outdir))
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the cohort goes on
        record.update(status="failed", error=scrub(_describe(exc), study, include_paths))
        log.debug("ingest %s failed:\n%s", study.study_id, traceback.format_exc())
    record["seconds"] = round(time.time() - start, 3)
    write_json_atomic(status_path(outdir, "ingest", study.study_id), record)
    log.info(
        "ingest %s: %s%s",
        study.study_id,
        record["status"],
        f" ({record['error']})" if record["error"] else "",
    )
    return record


def _read_and_write(study: Study, outdir: str | Path) -> dict:
    from medsam3.io.read import read_source
    from medsam3.io.zarr_store import write_study

    image = read_source(study.path, modality=study.modality)
    attrs = {"study_id": study.study_id, "medsam3_version": __version__}
    write_study(store_path(outdir, study.study_id), image, attrs=attrs)
    return {
        "kind": image.kind,
        "modality": image.modality,
        "shape": list(image.array.shape),
        "spacing": list(image.spacing),
        "origin": list(image.origin),
        "direction": list(image.direction),
        "frame_rate": image.frame_rate,
        "units": image.units,
        "source_digest": image.source_digest,
        "warnings": list(image.warnings),
    }


def _describe(exc: BaseException) -> str:
    from medsam3.io.read import ReadError

    if isinstance(exc, ReadError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
