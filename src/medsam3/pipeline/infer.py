"""Sharded cohort inference: one job segments a shard of studies with one loaded model.

For each study of the shard: read its Zarr store, settle its modality (a modality that ingest
only guessed is asked of the model when it has a modality classifier), resolve its concepts,
skip concepts whose label already holds the same exact phrase for this backend and checkpoint
(resume after a killed job), segment the rest with the image encoded once, store masks under
``labels/<concept_slug>`` (instance ids 1..n, 0 background: ``ConceptResult.instance_label``,
the same instances as ``medsam3 segment``), export them (``io.masks``, and one multi-label
NIfTI per study with ``nifti-ml``), and write the study's segments rows to its part
(``Layout.segments_part``).
A study that fails on its input is recorded in the shard status and the shard goes on; an
environment error (disk full, read-only folder, I/O, memory) fails the job instead.
The next study's store is read in a background thread (``io.prefetch``, one study ahead)
while a study is segmented; a read error is raised, and recorded, as the study's own.
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam3.agent.config import AgentConfig
from medsam3.agent.questions import answer_question, plan_question
from medsam3.agent.segmenter import wrap
from medsam3.io.common import EnvironmentFailure, concept_slug, environment_cause
from medsam3.io.dicom import misses_slices
from medsam3.io.image import MedImage
from medsam3.io.masks import write_concept_masks, write_multilabel_nifti
from medsam3.io.prefetch import Fetched, prefetch
from medsam3.io.zarr_store import (
    delete_label,
    list_labels,
    read_label,
    read_label_attrs,
    read_study,
    write_label,
)
from medsam3.models.base import ConceptResult, Segmenter
from medsam3.models.build import load_model, precision_kwargs, resolve_device
from medsam3.models.concepts import log_unknown_phrases
from medsam3.models.inputs import InputError
from medsam3.models.orientation import segment_in_display_order
from medsam3.models.upright import describe
from medsam3.pipeline.cohort import Study, concepts_for
from medsam3.pipeline.outdir import remove_stale_study_files
from medsam3.pipeline.settings import ModelSettings, SegmentSettings
from medsam3.pipeline.status import (
    JobStatus,
    StudyStatus,
    hide_source_path,
    read_status,
    write_status,
)
from medsam3.reports.provenance import provenance_row
from medsam3.reports.schemas import AGENT_TRACE_SCHEMA, PROVENANCE_SCHEMA, SEGMENTS_SCHEMA
from medsam3.reports.tables import segment_rows, write_parquet_atomic

log = logging.getLogger("medsam3.pipeline.infer")
PREFETCH_STUDIES = 1  # stores read ahead while a study is segmented (host memory: one more)
RAW_SUFFIX = "__raw"  # label of the backend's own mask where the agent changed it
AGENT_KEYS = ("critic_score", "agent_rounds", "review", "agent_action")


def _done_concepts(store: Path, concepts: list[str], model: Segmenter) -> set[str]:
    """Phrases whose label holds this exact phrase, from this backend, checkpoint, agent mode,
    key-slice spacing and precision (labels written before precision was recorded: float32)."""
    existing = set(list_labels(store))
    done = set()
    for phrase in concepts:
        if concept_slug(phrase) in existing:
            attrs = read_label_attrs(store, concept_slug(phrase))
            if (
                attrs.get("concept") == phrase
                and attrs.get("backend") == model.name
                and attrs.get("checkpoint_digest") == model.checkpoint_digest
                and attrs.get("agent") == _agent_mode(model)
                and attrs.get("key_spacing_mm") == getattr(model, "key_spacing_mm", None)
                and attrs.get("precision", "float32") == model.precision
            ):
                done.add(phrase)
    return done


@dataclass(frozen=True)
class ModalityChoice:
    """The modality a study is segmented as, and where it came from (see StudyStatus)."""

    modality: str | None
    source: str | None
    predicted: str | None = None
    confidence: float | None = None


def choose_modality(image: MedImage, model: Segmenter) -> ModalityChoice:
    """The modality to segment a stored study as.

    A modality from the cohort table or the DICOM header is kept. One that ingest only
    guessed (its heuristic: ``modality_source`` "guess") is asked of the model; a backend
    without a modality classifier (sam3, or a compact head trained without one) keeps the
    guess.

    Args:
        image: the study's stored image (its ``modality`` and ``modality_source`` from ingest).
        model: the loaded segmenter.

    Returns:
        The choice: source "model" with the prediction and its probability, else the ingest
        modality and source.
    """
    source = image.modality_source
    if source is None and any(w.startswith("modality guessed") for w in image.warnings):
        source = "guess"  # a store written before modality_source was recorded
    if source != "guess":
        return ModalityChoice(image.modality, source)
    try:
        guess = model.recognise_modality(image.array)
    except InputError as exc:
        log.info("modality stays the ingest guess %r: %s", image.modality, exc)
        return ModalityChoice(image.modality, source)
    return ModalityChoice(guess.modality, "model", guess.modality, float(guess.confidence))


def _agent_mode(model: Segmenter) -> str | None:
    """The agent mode a model runs with (None: no agent)."""
    config = getattr(model, "config", None)
    return config.mode if isinstance(config, AgentConfig) else None


def _store_result(store: Path, result: ConceptResult, model: Segmenter) -> None:
    """Write a concept's label (and, when the agent changed it, the backend's as ``__raw``;
    a ``__raw`` label left by an earlier run is removed when this one has none)."""
    raw = result.extra.pop("agent_raw_mask", None)
    label, scores = result.instance_label()
    attrs = {
        "concept": result.concept,
        "backend": model.name,
        "checkpoint_digest": model.checkpoint_digest,
        "presence": float(result.presence),
        "instance_scores": scores,
        "encoding": "instances",
        "nearest_known": list(result.nearest_known),
        "display_order": result.extra.get("display_order"),  # volumes: flips the model saw
        "upright": result.extra.get("upright"),  # 2D radiology: the order recognised / applied
        "presence_threshold": getattr(model, "presence_threshold", None),
        "key_spacing_mm": getattr(model, "key_spacing_mm", None),  # volumes: key slices
        "precision": model.precision,
        "encoded_slices": result.extra.get("encoded_slices"),
        "agent": _agent_mode(model),
        **{k: result.extra[k] for k in AGENT_KEYS if k in result.extra},
        "agent_trace": result.extra.get("agent_trace"),
    }
    slug = concept_slug(result.concept)
    write_label(store, slug, label, attrs, scores=scores)
    if raw is not None:
        presence = result.extra.get("agent_raw_presence", result.presence)
        raw_result = ConceptResult(result.concept, raw, presence)
        raw_label, raw_scores = raw_result.instance_label()
        raw_attrs = {**attrs, "presence": presence, "instance_scores": raw_scores, "raw": True}
        write_label(store, slug + RAW_SUFFIX, raw_label, raw_attrs, scores=raw_scores)
    elif delete_label(store, slug + RAW_SUFFIX):
        log.info("removed the stale raw label of %r (the agent left this mask unchanged)", slug)


def _export(
    label: np.ndarray, image: MedImage, phrase: str, study: Study, settings: SegmentSettings
) -> None:
    """Write a concept's mask files into the study's masks folder (formats: config export)."""
    write_concept_masks(
        label,
        image,
        phrase,
        settings.layout.masks(study.study_id),
        settings.export,
        source=study.path,
        algorithm=f"medsam3 {settings.model.backend}",
    )


def segment_study(
    study: Study,
    model: Segmenter,
    settings: SegmentSettings,
    stored: Fetched[Study, MedImage | None] | None = None,
) -> StudyStatus:
    """Segment one ingested study; store labels, exports and its segments part.

    Args:
        study: cohort row.
        model: loaded segmenter.
        settings: the segment job's settings (output folder, default concepts, exports).
        stored: the study's store as read ahead (:func:`read_stored`); its read error, if
            any, is raised where the store would have been read. None: read it now.

    Returns:
        The study's record: status "ok" with its concepts, those computed now and its modality
        (:func:`choose_modality`); "skipped" when its ingest failed; "failed" when it has no
        concepts (no phrase in its row and no ``default_concepts`` for its modality).
    """
    layout = settings.layout
    ingest = read_status(layout.status("ingest", study.study_id)).studies[0]
    if ingest.status != "ok":
        return StudyStatus(study.study_id, "segment", "skipped", error="ingest failed")
    remove_stale_study_files(layout, study.study_id)
    store = layout.store(study.study_id)
    image = stored.get() if stored is not None else None  # raises the read-ahead's error
    if image is None:
        image = read_study(store)
    choice = choose_modality(image, model)
    image.modality = choice.modality
    record = StudyStatus(
        study.study_id,
        "segment",
        modality=choice.modality,
        modality_source=choice.source,
        modality_predicted=choice.predicted,
        modality_confidence=choice.confidence,
    )
    concepts = concepts_for(study, image.modality, settings.default_concepts, image.body_region)
    if not concepts:
        record.status, record.error = "failed", _no_concepts(image.modality)
        return record
    todo = [c for c in concepts if c not in _done_concepts(store, concepts, model)]
    log_unknown_phrases(todo)
    if todo:
        for result in segment_in_display_order(model, image, todo).values():
            _store_result(store, result, model)
    rows, errors, trace, upright = _export_and_rows(study, image, concepts, model, settings)
    if upright:
        record.upright, record.upright_confidence = describe(upright), upright["confidence"]
    write_parquet_atomic(rows, layout.segments_part(study.study_id), SEGMENTS_SCHEMA)
    if _agent_mode(model):
        write_parquet_atomic(trace, layout.agent_trace_part(study.study_id), AGENT_TRACE_SCHEMA)
    else:  # a trace of an earlier run with the agent on no longer describes these labels
        layout.agent_trace_part(study.study_id).unlink(missing_ok=True)
    record.concepts, record.computed = concepts, todo
    if study.question:
        record.question = study.question
        by_concept = {r["concept"]: r for r in rows if r["level"] == "concept"}
        record.answer = answer_question(plan_question(study.question), by_concept)
    record.export_errors = [_hide(study, settings, e) for e in errors]
    return record


def _no_concepts(modality: str | None) -> str:
    """Why a study has nothing to segment, and the two ways to fix it."""
    return (
        f"no concepts to segment: the cohort row names none and config default_concepts has "
        f"none for modality {modality!r} (nor a '*' fallback); add phrases to the row's "
        f"concepts column, or set default_concepts.{modality or '<modality>'} in config.yaml "
        "(or fix the modality column if it is misspelt)"
    )


def _hide(study: Study, settings: SegmentSettings, message: str) -> str:
    """A message with the study's source paths hidden (unless ``report_paths``)."""
    return hide_source_path(message, study.path, settings.report_paths, settings.outdir)


def _export_and_rows(
    study: Study, image: MedImage, concepts: list[str], model: Segmenter, settings: SegmentSettings
) -> tuple[list[dict], list[str], list[dict]]:
    """Export every stored concept's masks and build its segments and agent trace rows.

    Returns:
        (segments rows, "<concept>: <error>" of each failed export, agent trace rows, the
        upright step's facts of the first label that has them or None).
    """
    store = settings.layout.store(study.study_id)
    rows, export_errors, labels, trace, upright = [], [], {}, [], None
    for phrase in concepts:
        label, attrs = read_label(store, concept_slug(phrase))
        labels[phrase] = label
        try:
            _export(label, image, phrase, study, settings)
        except Exception as exc:  # noqa: BLE001 - the mask is stored; the export failure is recorded
            if environment_cause(exc):
                raise
            trace = _hide(study, settings, traceback.format_exc())
            log.warning("export of %s / %s failed:\n%s", study.study_id, phrase, trace)
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
            missing_slices=image.kind == "volume" and misses_slices(image.warnings),
            agent=attrs if attrs.get("agent") else None,
        )
        trace += [{"study_id": study.study_id, **row} for row in attrs.get("agent_trace") or []]
        upright = upright or attrs.get("upright")
    if "nifti-ml" in settings.export:
        write_multilabel_nifti(labels, image, settings.layout.masks(study.study_id))
    return rows, export_errors, trace, upright


def segment_shard(name: str, studies: list[Study], settings: SegmentSettings) -> JobStatus:
    """Segment a shard of studies with one model load; write its provenance part and status.

    Args:
        name: the shard's name (``shard-0000``, ...).
        studies: its cohort rows (``cohort.resolve_studies`` of the shard's references).
        settings: the segment job's settings.

    Returns:
        The shard status, also written as ``Layout.status("segment", name)``.

    Raises:
        EnvironmentFailure: the machine failed; no status is written, so the shard is redone.
    """
    start = time.time()
    for warning in settings.warnings:
        log.warning("configuration: %s", warning)
    model = load_model(
        settings.model.backend,
        checkpoint=settings.model.checkpoint or None,
        **_model_kwargs(settings.model),
    )
    model = wrap(model, settings.agent)
    load_s = time.time() - start
    records = segment_studies(name, studies, model, settings)
    prov = provenance_row(
        f"segment/{name}",
        model.name,
        model.checkpoint_digest,
        settings.to_params(),
        start,
        time.time(),
        warnings=settings.warnings,
    )
    layout = settings.layout
    write_parquet_atomic([prov], layout.provenance_part(name), PROVENANCE_SCHEMA)
    status = JobStatus("segment", name, records, model_load_s=load_s)
    write_status(layout.status("segment", name), status)
    return status


def segment_studies(
    name: str, studies: list[Study], model: Segmenter, settings: SegmentSettings
) -> list[StudyStatus]:
    """Segment studies one after the other, each store read while the one before is segmented.

    Args:
        name: the shard's name (for the progress lines).
        studies: cohort rows.
        model: the loaded segmenter.
        settings: the segment job's settings.

    Returns:
        One record per study, in order, with its seconds (input failures recorded).

    Raises:
        EnvironmentFailure: the machine failed (the read-ahead thread is stopped first).
    """
    records, n = [], len(studies)
    ahead = prefetch(studies, lambda s: read_stored(s, settings), PREFETCH_STUDIES)
    with closing(ahead):
        for i, stored in enumerate(ahead, start=1):
            study = stored.item
            log.info("segment %s (%s, study %d of %d): started", study.study_id, name, i, n)
            t0 = time.time()
            records.append(_segment_safely(study, model, settings, stored))
            records[-1].seconds = time.time() - t0
            log.info(progress_line(name, i, n, records[-1]))
    return records


def progress_line(shard: str, index: int, total: int, record: StudyStatus) -> str:
    """The line a segment job prints per study (Snakemake shows it as the run goes).

    Example: ``segment demo-mr-series (shard-0000, study 1 of 4): ok in 12.3 s, 1 concept
    (brain), 1 computed``; a failed study ends with its reason.
    """
    head = f"segment {record.study_id} ({shard}, study {index} of {total}): {record.status}"
    head += f" in {record.seconds or 0.0:.1f} s"
    if record.status != "ok":
        return f"{head}: {record.error}"
    names = ", ".join(record.concepts)
    count = f"{len(record.concepts)} concept{'s' if len(record.concepts) != 1 else ''}"
    return f"{head}, {count} ({names}), {len(record.computed)} computed"


def _model_kwargs(model: ModelSettings) -> dict:
    """Backend options of ``load_model``: the resolved device, the LoRA adapter if any, the
    compact backend's key-slice spacing when configured and its upright step, and the
    precision unless "auto"."""
    kwargs = {"device": resolve_device(model.backend, model.device)}
    if model.lora:
        kwargs["lora"] = model.lora
    if model.backend == "compact" and model.key_spacing_mm is not None:
        kwargs["key_spacing_mm"] = model.key_spacing_mm
    if model.backend == "compact":
        kwargs["upright"] = model.upright
    return kwargs | precision_kwargs(model.backend, model.precision)


def read_stored(study: Study, settings: SegmentSettings) -> MedImage | None:
    """A study's stored image, to read ahead of segmenting it.

    Args:
        study: cohort row.
        settings: the segment job's settings (its output folder).

    Returns:
        The image (``read_study``); None when the study's ingest did not succeed
        (:func:`segment_study` skips it without reading).

    Raises:
        ReadError: the store is missing or incomplete (any read error, as ``read_study``).
    """
    ingest = read_status(settings.layout.status("ingest", study.study_id)).studies[0]
    return read_study(settings.layout.store(study.study_id)) if ingest.status == "ok" else None


def _segment_safely(
    study: Study,
    model: Segmenter,
    settings: SegmentSettings,
    stored: Fetched[Study, MedImage | None] | None = None,
) -> StudyStatus:
    """:func:`segment_study`, with an input failure recorded instead of raised.

    Raises:
        EnvironmentFailure: an environment error (the message hides source paths).
    """
    try:
        return segment_study(study, model, settings, stored)
    except Exception as exc:  # noqa: BLE001 - a failed study is recorded, the shard goes on
        error = _hide(study, settings, f"{type(exc).__name__}: {exc}")
        if environment_cause(exc):
            raise EnvironmentFailure(
                f"segment {study.study_id}: {error}; the study is not recorded as failed: fix "
                "the machine (space, permissions, memory) and run the workflow again"
            ) from None
        trace = _hide(study, settings, traceback.format_exc())
        log.warning("segment %s failed:\n%s", study.study_id, trace)
        return StudyStatus(study.study_id, "segment", "failed", error=error)
