"""Parquet report tables: schemas, row builders, atomic writes and streaming aggregation.

Tables (one Parquet file each in a reports folder, see ``TABLE_FILES``): studies, segments,
metrics, failures, provenance. Every table has an explicit schema (defined in
``medsam3.reports.schemas``, re-exported here) whose fields carry a ``description`` in their
metadata, so an empty table still has typed columns. Rows never hold
patient identifiers: ``study_id`` is the pipeline's pseudonymous id, errors are scrubbed of UIDs
and dates.

Geometry conventions (see ``medsam3.types``): voxel boxes are (x0, y0[, z0], x1, y1[, z1]) with
exclusive ends; centroids in index order (x, y[, z]); physical values come from SimpleITK's
index -> physical mapping (LPS mm for DICOM-derived data).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import SimpleITK as sitk
from scipy import ndimage

from medsam3.io.atomic import atomic_path
from medsam3.io.common import scrub_identifiers
from medsam3.io.image import ImageInfo, MedImage
from medsam3.reports.provenance import iso_time
from medsam3.reports.schemas import (  # noqa: F401  (re-exported)
    FAILURES_SCHEMA,
    METRICS_SCHEMA,
    PROVENANCE_SCHEMA,
    SEGMENTS_SCHEMA,
    STUDIES_SCHEMA,
    TABLE_FILES,
)
from medsam3.types import PathLikeStr


def study_row(
    study_id: str,
    status: str,
    error: str | None,
    image: ImageInfo | None,
    modality: dict | None = None,
) -> dict:
    """One row of the studies table.

    Args:
        study_id: pseudonymous study id.
        status: "ok", "failed" or "ingested" (stored, not segmented yet).
        error: error message (UIDs and dates are scrubbed here) or None.
        image: the ingested image's description, or None when ingest failed.
        modality: what segmentation settled (keys modality, modality_source,
            modality_predicted, modality_confidence, upright, upright_confidence; question and
            answer when the row asked one), or None before segmentation (the image's modality
            and source are used).

    Returns:
        dict matching ``STUDIES_SCHEMA``.
    """
    row = dict.fromkeys(STUDIES_SCHEMA.names)
    row.update(
        study_id=study_id, status=status, error=scrub_identifiers(error, 500) if error else None
    )
    if image is not None:
        row.update(
            kind=image.kind,
            modality=image.modality,
            modality_source=image.modality_source,
            shape=list(image.shape),
            spacing=list(image.spacing),
            spacing_unit=image.spacing_unit,
            body_region=image.body_region,
            body_region_source=image.body_region_source,
            origin=list(image.origin),
            frame_count=image.frame_count,
            source_digest=image.source_digest,
            warnings=[scrub_identifiers(w, 500) for w in image.warnings],
        )
    settled = dict(modality or {})
    row.update(question=settled.pop("question", None), answer=settled.pop("answer", None))
    if settled.get("modality_source"):
        row.update(settled)
    return row


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully connected (8 in 2D, 26 in 3D) components of ``mask > 0``."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, n = ndimage.label(mask > 0, structure=structure)
    return labels, int(n)


def _to_physical(ref, index_xyz) -> list[float]:
    """SimpleITK continuous index (x, y[, z]) -> physical point through the image ``ref``."""
    return list(ref.TransformContinuousIndexToPhysicalPoint([float(i) for i in index_xyz]))


def _geometry_image(image: MedImage):
    """A 1-voxel SimpleITK image carrying only ``image``'s geometry (no pixel copy)."""
    ndim = len(image.spacing)
    ref = sitk.Image([1] * ndim, sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in image.spacing])
    ref.SetOrigin([float(o) for o in image.origin])
    ref.SetDirection([float(d) for d in image.direction])
    return ref


def _geometry(region: np.ndarray, slices: tuple[slice, ...], image: MedImage) -> dict:
    """Box, centroid and their physical versions of one region (bool array cropped to slices)."""
    lo = [s.start for s in slices][::-1]  # numpy (z, y, x) -> index (x, y, z)
    hi = [s.stop for s in slices][::-1]
    ref = _geometry_image(image)
    com = ndimage.center_of_mass(region)
    centroid = [float(c + s.start) for c, s in zip(com, slices, strict=True)][::-1]
    corners = np.array(
        [
            _to_physical(ref, [(lo[a], hi[a] - 1)[(k >> a) & 1] for a in range(len(lo))])
            for k in range(2 ** len(lo))
        ]
    )
    return {
        "bbox_voxel": [int(v) for v in lo + hi],
        "bbox_mm": [float(v) for v in np.concatenate([corners.min(0), corners.max(0)])],
        "centroid_voxel": centroid,
        "centroid_mm": [float(v) for v in _to_physical(ref, centroid)],
    }


def _sizes(region: np.ndarray, slices: tuple[slice, ...], image: MedImage) -> dict:
    """Counts, physical size and per-slice/per-frame presence of one region."""
    n = int(region.sum())
    out = {"voxels": n}
    sp = [float(s) for s in image.spacing]
    physical = image.has_physical_spacing
    if image.kind == "image":
        out.update(area_px=n, area_mm2=n * sp[0] * sp[1] if physical else None)
        return out
    z0 = slices[0].start
    per = region.reshape(region.shape[0], -1).sum(1)
    present = [int(z0 + i) for i in np.flatnonzero(per)]
    if image.kind == "volume":
        volume = n * sp[0] * sp[1] * sp[2] / 1000.0 if physical else None
        out.update(volume_ml=volume, slices=present)
    else:
        full = np.zeros(image.spatial_shape[0], dtype=np.int64)
        full[z0 : z0 + len(per)] = per
        out.update(frames=present, frame_pixels=[int(v) for v in full])
    return out


def _region_row(labels: np.ndarray, lab: int, sl: tuple[slice, ...], image: MedImage) -> dict:
    """Geometry and size columns of label ``lab`` within its bounding slices."""
    region = labels[sl] == lab
    return {**_sizes(region, sl, image), **_geometry(region, sl, image)}


def segment_rows(
    study_id: str,
    concept: str,
    result_mask: np.ndarray,
    image: MedImage,
    presence: float,
    instance_scores: list[float],
    backend: str,
    checkpoint_digest: str,
    missing_slices: bool = False,
    agent: dict | None = None,
) -> list[dict]:
    """Rows of the segments table for one (study, concept): one concept row, one per instance.

    The instances are the label map's ids (``io.masks.instance_labels`` made them: the model's
    instances, or the connected components of the union); instance k is the k-th smallest id
    and gets ``instance_scores[id - 1]`` (the presence when the list is shorter). Sizes in mm
    (``area_mm2``, ``volume_ml``) only when the image's spacing is physical; otherwise they are
    null and ``voxels`` / ``area_px`` count pixels.

    Args:
        study_id: pseudonymous study id.
        concept: concept phrase.
        result_mask: (y, x), (z, y, x) or (t, y, x) instance ids on ``image``'s grid.
        image: the segmented image (geometry source).
        presence: concept presence probability.
        instance_scores: per-id scores.
        backend: backend name.
        checkpoint_digest: sha256 of the checkpoint.
        missing_slices: the volume's series misses slices (flagged on every row).
        agent: ``critic_score``, ``agent_rounds`` and ``review`` of the agent (concept row
            only); None when the agent is off (the columns stay null).

    Returns:
        list of dicts matching ``SEGMENTS_SCHEMA``; an absent concept gives one concept row with
        zero voxels and null geometry.
    """
    mask = np.asarray(result_mask)
    if mask.shape != tuple(image.spatial_shape):
        raise ValueError(
            f"mask shape {mask.shape} differs from the image's {image.spatial_shape} "
            f"(study {study_id}, concept {concept!r}); masks must be on the image grid"
        )
    base = dict.fromkeys(SEGMENTS_SCHEMA.names)
    base.update(
        study_id=study_id,
        concept=concept,
        presence=float(presence),
        backend=backend,
        checkpoint_digest=checkpoint_digest,
        missing_slices=bool(missing_slices),
        spacing_unit=image.spacing_unit,
    )
    ids = [int(v) for v in np.unique(mask[mask > 0])]
    scores = [_score(instance_scores, v, presence) for v in ids]
    concept_row = {
        **base,
        "level": "concept",
        "n_instances": len(ids),
        "score": max(scores) if scores else None,
        "n_components": _components(mask)[1],
        **_agent_columns(agent),
    }
    union = (mask > 0).astype(np.uint8)
    boxes = ndimage.find_objects(union)
    if boxes and boxes[0] is not None:
        concept_row.update(_region_row(union, 1, boxes[0], image))
    else:
        concept_row.update(voxels=0, **_empty_sizes(image))
    rows = [concept_row]
    boxes = ndimage.find_objects(mask.astype(np.int64))
    for k, (value, score) in enumerate(zip(ids, scores, strict=True), start=1):
        sl = boxes[value - 1]
        row = {
            **base,
            "level": "instance",
            "instance": k,
            "score": score,
            "n_components": _components(mask[sl] == value)[1],
        }
        row.update(_region_row(mask, value, sl, image))
        rows.append(row)
    return rows


def _agent_columns(agent: dict | None) -> dict:
    """The agent's concept-row columns (empty when the agent is off)."""
    if not agent or agent.get("critic_score") is None:
        return {}
    return {
        "critic_score": float(agent["critic_score"]),
        "agent_rounds": int(agent.get("agent_rounds") or 0),
        "review": bool(agent.get("review")),
    }


def _score(scores: list[float], value: int, presence: float) -> float:
    """The score of instance id ``value`` (``scores[value - 1]``), else the presence."""
    return float(scores[value - 1]) if 0 < value <= len(scores) else float(presence)


def _empty_sizes(image: MedImage) -> dict:
    """Zero-size columns for an absent concept."""
    physical = image.has_physical_spacing
    if image.kind == "image":
        return {"area_px": 0, "area_mm2": 0.0 if physical else None}
    if image.kind == "volume":
        return {"volume_ml": 0.0 if physical else None, "slices": []}
    return {"frames": [], "frame_pixels": [0] * int(image.spatial_shape[0])}


def metrics_row(
    study_id: str,
    concept: str,
    metrics: dict,
    presence: float,
    threshold: float,
    nsd_tolerance_mm: float,
) -> dict:
    """One row of the metrics table.

    Args:
        study_id: pseudonymous study id.
        concept: concept phrase.
        metrics: output of :func:`medsam3.reports.metrics.segmentation_metrics`.
        presence: model presence probability.
        threshold: presence threshold that decides ``pred_present``.
        nsd_tolerance_mm: tolerance the NSD was computed at.

    Returns:
        dict matching ``METRICS_SCHEMA``.
    """
    pred_present = float(presence) >= threshold
    truth_present = int(metrics["truth_voxels"]) > 0
    row = dict.fromkeys(METRICS_SCHEMA.names)
    row.update(
        {k: metrics[k] for k in ("dice", "iou", "nsd", "hd95", "pred_voxels", "truth_voxels")}
    )
    row.update(
        study_id=study_id,
        concept=concept,
        presence=float(presence),
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        pred_present=pred_present,
        truth_present=truth_present,
        presence_correct=pred_present == truth_present,
    )
    return row


def failure_row(study_id: str, stage: str, error: BaseException | str) -> dict:
    """One row of the failures table.

    Args:
        study_id: pseudonymous study id.
        stage: pipeline stage (ingest, segment, export, metrics, ...).
        error: the exception (its type name is kept) or a message; UIDs and dates are scrubbed.

    Returns:
        dict matching ``FAILURES_SCHEMA`` with the current UTC time.
    """
    msg = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return {
        "study_id": study_id,
        "stage": stage,
        "error": scrub_identifiers(msg, 500),
        "time": iso_time(time.time()),
    }


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns; unknown keys raise.

    Args:
        rows: dicts keyed by column name (missing keys become null).
        schema: one of the ``*_SCHEMA`` objects.

    Returns:
        pyarrow Table with ``schema``.
    """
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise ValueError(
                f"row {i} has columns {sorted(extra)} not in the schema {sorted(names)}"
            )
    return pa.Table.from_pylist(rows, schema=schema)


def write_parquet_atomic(rows: list[dict], path: PathLikeStr, schema: pa.Schema) -> Path:
    """Write rows as one Parquet file atomically (temporary sibling, then ``os.replace``).

    Args:
        rows: dicts matching ``schema`` (an empty list writes an empty table with its columns).
        path: destination ``.parquet`` file; parent folders are created.
        schema: the table's schema (``STUDIES_SCHEMA``, ``SEGMENTS_SCHEMA``, ...).

    Returns:
        The destination path.
    """
    table = rows_to_table(rows, schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def aggregate_parts(part_paths: list[Path], out_path: PathLikeStr, schema: pa.Schema) -> Path:
    """Concatenate many Parquet parts into one file, streaming record batches (bounded memory).

    Args:
        part_paths: per-study / per-shard Parquet files written with ``schema``.
        out_path: destination file (written atomically).
        schema: the common schema; parts are read (and cast) through it.

    Returns:
        The destination path.
    """
    parts = [str(p) for p in part_paths]
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} report part(s) missing, e.g. {missing[0]}")
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        if parts:
            dataset = pads.dataset(parts, schema=schema, format="parquet")
            for batch in dataset.to_batches(batch_size=65536):
                writer.write_batch(batch)
    return Path(out_path)


def duckdb_example(reports_dir: PathLikeStr, concept: str = "liver") -> str:
    """SQL (DuckDB) for the median concept volume by modality, as shown in the README.

    Args:
        reports_dir: folder holding studies.parquet and segments.parquet.
        concept: concept phrase to summarise.

    Returns:
        A SQL query string; run it with ``duckdb.sql(query)``.
    """
    d = Path(reports_dir)
    name = concept.replace("'", "''")
    return (
        "SELECT s.modality, count(*) AS n_studies, median(g.volume_ml) AS median_volume_ml\n"
        f"FROM read_parquet('{d / 'segments.parquet'}') AS g\n"
        f"JOIN read_parquet('{d / 'studies.parquet'}') AS s USING (study_id)\n"
        f"WHERE g.level = 'concept' AND g.concept = '{name}' AND g.voxels > 0\n"
        "GROUP BY s.modality ORDER BY s.modality"
    )
