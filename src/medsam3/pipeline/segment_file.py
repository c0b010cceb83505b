"""Segment one file from the command line (TotalSegmentator-style): masks + a JSON summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medsam3.io.atomic import write_text_atomic
from medsam3.io.image import MedImage
from medsam3.io.masks import write_concept_masks
from medsam3.io.read import read_source
from medsam3.models.base import ConceptResult, Segmenter
from medsam3.models.concepts import log_unknown_phrases
from medsam3.models.orientation import segment_in_display_order

log = logging.getLogger("medsam3.segment")


def segment_file(
    input_path: str | Path,
    concepts: list[str],
    outdir: str | Path,
    model: Segmenter,
    modality: str | None = None,
) -> dict:
    """Segment the concepts in one image, volume or video and write masks and ``summary.json``.

    Outputs: ``OUTDIR/<concept_slug>.png`` for 2D inputs, ``.nii.gz`` with the input's geometry
    for volumes, ``<concept_slug>/frame_0000.png ...`` for videos.

    Args:
        input_path: file or DICOM series folder (anything ``medsam3.io.read.read_source`` reads).
        concepts: phrases.
        outdir: output folder (created).
        model: a loaded Segmenter.
        modality: overrides the detected modality.

    Returns:
        The summary: per concept presence, instance count, pixels, area_mm2 or volume_ml, file.
    """
    image = read_source(input_path, modality=modality)
    log_unknown_phrases(concepts)
    results = segment_in_display_order(model, image, concepts)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    summary = {
        "input_kind": image.kind,
        "modality": image.modality,
        "backend": model.name,
        "checkpoint_digest": model.checkpoint_digest,
        "concepts": {c: _write_concept(r, image, outdir) for c, r in results.items()},
    }
    write_text_atomic(outdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_concept(result: ConceptResult, image: MedImage, outdir: Path) -> dict:
    """Write one concept's mask (PNG, NIfTI or video frames) and return its summary entry."""
    mask = np.asarray(result.mask, dtype=np.uint8)
    written = write_concept_masks(mask, image, result.concept, outdir, formats=("nifti", "png"))
    entry = {
        "presence": round(float(result.presence), 4),
        "instances": len(result.instances),
        "pixels": int(mask.astype(bool).sum()),
        "file": written[0].relative_to(outdir).parts[0],  # a video's frames: their folder
        "nearest_known": result.nearest_known,
    }
    entry.update(_physical_size(mask, image))
    log.info(
        "%s: presence %.3f, %d instance(s)", result.concept, result.presence, entry["instances"]
    )
    return entry


def _physical_size(mask: np.ndarray, image: MedImage) -> dict:
    voxel = float(np.prod(image.spacing[: mask.ndim]))
    count = int(mask.astype(bool).sum())
    if image.kind == "volume":
        return {"volume_ml": round(count * voxel / 1000.0, 4)}
    if image.kind == "image":
        return {"area_mm2": round(count * voxel, 4)}
    return {}
