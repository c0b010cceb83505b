"""Sharded cohort inference: one job segments a shard of studies with one loaded model.

For each study of the shard: read its Zarr store, resolve its concepts, skip concepts whose
label already exists for this backend and checkpoint (resume after a killed job), segment the
rest with the image encoded once, store masks under ``labels/<concept_slug>`` (uint8 instance
ids 1..n, 0 background; above 255 instances a 0/1 mask with ``encoding: binary``), export them,
and write the study's segments rows to ``{outdir}/parts/segments/{study_id}.parquet``.
A failing study is recorded in the shard status and the shard goes on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsam3.io.atomic import write_json_atomic
from medsam3.io.image import MedImage
from medsam3.models.base import ConceptResult, Segmenter
from medsam3.models.concepts import log_unknown_phrases
from medsam3.models.inputs import concept_slug
from medsam3.models.orientation import segment_in_display_order
from medsam3.pipeline.cohort import Study, concepts_for
from medsam3.pipeline.ingest import scrub, status_path, store_path

log = logging.getLogger("medsam3.pipeline.infer")


def shard_studies(study_ids: list[str], shard_size: int) -> dict[str, list[str]]:
    """Deterministic shards in cohort-table order: ``shard-0000`` holds the first K studies.

    Appending rows to a cohort only adds shards or fills the last one, so earlier shards keep
    their members and are not recomputed.
    """
    return {
        f"shard-{i // shard_size:04d}": study_ids[i : i + shard_size]
        for i in range(0, len(study_ids), shard_size)
    }


def instance_label(result: ConceptResult) -> tuple[np.ndarray, str]:
    """Encode a result as a label array: instance ids (uint8) or a 0/1 mask above 255 instances.

    Returns:
        (label array on the input grid, encoding "instances" or "binary").
    """
    union = np.asarray(result.mask).astype(bool)
    if 0 < len(result.instances) <= 255:
        label = np.zeros(union.shape, np.uint8)
        for k, inst in enumerate(result.instances, start=1):
            label[np.asarray(inst.mask, bool) & union & (label == 0)] = k
        if np.array_equal(label > 0, union):
            return label, "instances"
    components, n = ndimage.label(union)  # instances do not tile the union: use its components
    if n <= 255:
        return components.astype(np.uint8), "instances"
    return union.astype(np.uint8), "binary"


def _done_concepts(store: Path, concepts: list[str], model: Segmenter) -> set[str]:
    from medsam3.io.zarr_store import list_labels, read_label_attrs

    existing = set(list_labels(store))
    done = set()
    for phrase in concepts:
        if concept_slug(phrase) in existing:
            attrs = read_label_attrs(store, concept_slug(phrase))
            if (
                attrs.get("backend") == model.name
                and attrs.get("checkpoint_digest") == model.checkpoint_digest
            ):
                done.add(phrase)
    return done


def _store_result(store: Path, result: ConceptResult, model: Segmenter) -> None:
    from medsam3.io.zarr_store import write_label

    label, encoding = instance_label(result)
    attrs = {
        "concept": result.concept,
        "backend": model.name,
        "checkpoint_digest": model.checkpoint_digest,
        "presence": float(result.presence),
        "instance_scores": [float(i.score) for i in result.instances][:255],
        "encoding": encoding,
        "nearest_known": list(result.nearest_known),
        "display_order": result.extra.get("display_order"),  # volumes: flips the model saw
    }
    write_label(store, concept_slug(result.concept), label, attrs)


def _export(label: np.ndarray, image: MedImage, concept: str, study: Study, cfg: dict) -> None:
    from medsam3 import __version__
    from medsam3.io.masks import export_dicom_seg, export_nifti, export_png, export_video_masks

    base = Path(cfg["outdir"], "masks", study.study_id)
    slug = concept_slug(concept)
    formats = cfg.get("export", [])
    if image.kind == "image" and "png" in formats:
        export_png(label, base / f"{slug}.png")
    if image.kind == "volume" and "nifti" in formats:
        export_nifti(label, image, base / f"{slug}.nii.gz")
    if image.kind == "video" and ("png" in formats or "nifti" in formats):
        export_video_masks(label, image, base / slug, fmt="png" if "png" in formats else "nifti")
    if image.kind == "volume" and "dicom-seg" in formats:
        sources = _dicom_sources(study.path)
        if sources:
            export_dicom_seg(
                label > 0,
                sources,
                concept,
                base / f"{slug}.dcm",
                algorithm=f"medsam3 {cfg['model']['backend']}",
                version=__version__,
            )


def _dicom_sources(path: str) -> list[Path]:
    from medsam3.io.dicom import is_dicom_file
    from medsam3.io.read import read_dcmlist

    source = Path(path)
    if source.suffix == ".dcmlist":
        return read_dcmlist(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file() and is_dicom_file(p))
    return [source] if is_dicom_file(source) else []


def segment_study(study: Study, model: Segmenter, cfg: dict) -> dict:
    """Segment one ingested study; store labels, exports and its segments part.

    Args:
        study: cohort row.
        model: loaded segmenter.
        cfg: workflow config (outdir, default_concepts, export, model).

    Returns:
        Status record: study_id, status (ok, skipped, failed), concepts done/reused, error.
    """
    from medsam3.io.zarr_store import read_label, read_study
    from medsam3.reports.tables import SEGMENTS_SCHEMA, segment_rows, write_parquet_atomic

    ingest = json.loads(
        status_path(cfg["outdir"], "ingest", study.study_id).read_text(encoding="utf-8")
    )
    if ingest.get("status") != "ok":
        return {"study_id": study.study_id, "status": "skipped", "error": "ingest failed"}
    store = store_path(cfg["outdir"], study.study_id)
    image = read_study(store)
    concepts = concepts_for(study, image.modality, cfg.get("default_concepts", {}))
    todo = [c for c in concepts if c not in _done_concepts(store, concepts, model)]
    log_unknown_phrases(todo)
    if todo:
        results = segment_in_display_order(model, image, todo)
        for result in results.values():
            _store_result(store, result, model)
    rows, export_errors = [], []
    for phrase in concepts:
        label, attrs = read_label(store, concept_slug(phrase))
        try:
            _export(label, image, phrase, study, cfg)
        except Exception as exc:  # noqa: BLE001 - the mask is stored; the export failure is recorded
            log.exception("export of %s / %s failed", study.study_id, phrase)
            export_errors.append(f"{phrase}: {type(exc).__name__}: {exc}")
        rows += segment_rows(
            study.study_id,
            phrase,
            label,
            image,
            attrs["presence"],
            attrs["instance_scores"],
            model.name,
            model.checkpoint_digest,
        )
    write_parquet_atomic(
        rows, Path(cfg["outdir"], "parts", "segments", f"{study.study_id}.parquet"), SEGMENTS_SCHEMA
    )
    return {
        "study_id": study.study_id,
        "status": "ok",
        "concepts": concepts,
        "computed": todo,
        "error": None,
        "export_errors": [scrub(e, study, cfg.get("report_paths", False)) for e in export_errors],
    }


def segment_shard(shard: str, studies: list[Study], cfg: dict, out_status: str | Path) -> dict:
    """Segment a shard of studies with one model load; write the shard status JSON.

    Args:
        shard: shard name (``shard-0000``).
        studies: the shard's cohort rows.
        cfg: workflow config.
        out_status: path of the shard status JSON (the rule's output).

    Returns:
        The shard status: per-study records, failures, provenance.
    """
    from medsam3.models.build import load_model
    from medsam3.reports.provenance import provenance_row
    from medsam3.reports.tables import PROVENANCE_SCHEMA, write_parquet_atomic

    start = time.time()
    model_cfg = cfg["model"]
    model = load_model(
        model_cfg["backend"],
        checkpoint=model_cfg.get("checkpoint") or None,
        **_model_kwargs(model_cfg),
    )
    load_s = time.time() - start
    records = []
    for i, study in enumerate(studies, start=1):
        t0 = time.time()
        records.append({**_segment_safely(study, model, cfg), "seconds": time.time() - t0})
        log.info("[%s %d/%d] %s: %s", shard, i, len(studies), study.study_id, records[-1]["status"])
    prov = provenance_row(
        f"segment/{shard}", model.name, model.checkpoint_digest, cfg, start, time.time()
    )
    write_parquet_atomic(
        [prov], Path(cfg["outdir"], "parts", "provenance", f"{shard}.parquet"), PROVENANCE_SCHEMA
    )
    status = {"shard": shard, "stage": "segment", "model_load_s": load_s, "studies": records}
    write_json_atomic(out_status, status)
    return status


def _model_kwargs(model_cfg: dict) -> dict:
    from medsam3.models.build import resolve_device

    kwargs = {"device": resolve_device(model_cfg["backend"], model_cfg.get("device"))}
    if model_cfg.get("lora"):
        kwargs["lora"] = model_cfg["lora"]
    return kwargs


def _segment_safely(study: Study, model: Segmenter, cfg: dict) -> dict:
    try:
        return segment_study(study, model, cfg)
    except Exception as exc:  # noqa: BLE001 - a failed study is recorded, the shard goes on
        log.exception("segment %s failed", study.study_id)
        error = scrub(f"{type(exc).__name__}: {exc}", study, cfg.get("report_paths", False))
        return {"study_id": study.study_id, "status": "failed", "error": error}
