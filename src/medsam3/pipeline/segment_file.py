"""Segment one file from the command line (TotalSegmentator-style): masks + a JSON summary.

The masks and numbers are the pipeline's: the same instances (``ConceptResult.instance_label``),
the same mask writer (``io.masks.write_concept_masks``) and the same sizes (the concept row of
``reports.tables.segment_rows``), so ``medsam3 segment`` and a pipeline run on the same input
write byte-identical masks and report the same counts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from medsam3.io.atomic import write_text_atomic
from medsam3.io.dicom import map_modality
from medsam3.io.image import MedImage
from medsam3.io.masks import write_concept_masks, write_multilabel_nifti
from medsam3.io.read import read_source
from medsam3.models.base import ConceptResult, Segmenter
from medsam3.models.concepts import load_vocabulary, log_unknown_phrases
from medsam3.models.inputs import InputError, check_concepts
from medsam3.models.orientation import segment_in_display_order
from medsam3.models.upright import describe
from medsam3.reports.tables import segment_rows

log = logging.getLogger("medsam3.segment")


def check_request(
    input_path: str | Path, concepts: list[str], outdir: str | Path, modality: str | None
) -> tuple[MedImage, list[str], str | None]:
    """Check everything ``medsam3 segment`` was given before a model is loaded.

    Args:
        input_path: the file or DICOM series folder.
        concepts: the phrases (``-p``).
        outdir: the output folder (``-o``).
        modality: ``--modality`` or None.

    Returns:
        (the input read, the phrases stripped, the modality in medsam3's lower-case name).

    Raises:
        InputError: an empty or repeated phrase, an unknown modality, an output folder that is
            a file or cannot be written. ReadError: the input is missing or unreadable.
    """
    phrases = check_concepts(concepts)
    name = check_modality(modality)
    image = read_source(input_path, modality=name)
    check_output_folder(outdir)
    return image, phrases, name


def check_modality(modality: str | None) -> str | None:
    """The lower-case modality for a ``--modality`` value (a name or a DICOM code), or raise.

    Known: every modality of the vocabulary (``medsam3 concepts``) and DICOM's codes (CT, MR,
    US, CR, DX, XA, ES, OP, SM, ...) mapped to them.
    """
    if modality is None:
        return None
    name = map_modality(modality) or modality.strip().lower()
    known = sorted({m for c in load_vocabulary() for m in c.modality})
    if name not in known:
        raise InputError(
            f"--modality {modality!r} is not a known modality; use one of {', '.join(known)} "
            "(or a DICOM code such as CT or MR)"
        )
    return name


def check_output_folder(outdir: str | Path) -> Path:
    """The output folder, created; raise when it is a file or cannot be written."""
    folder = Path(outdir).expanduser()
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise InputError(f"-o {outdir}: {part} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"-o {outdir}: cannot create it ({exc.strerror}); give another folder"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"-o {outdir}: the folder is not writable; give another folder")
    return folder


SIZE_KEYS = ("voxels", "area_px", "area_mm2", "volume_ml")


def segment_file(
    input_path: str | Path,
    concepts: list[str],
    outdir: str | Path,
    model: Segmenter,
    modality: str | None = None,
    multilabel: bool = False,
    image: MedImage | None = None,
) -> dict:
    """Segment the concepts in one image, volume or video and write masks and ``summary.json``.

    Outputs (``io.masks``): ``OUTDIR/<concept_slug>.png`` (0/255) and ``.nii.gz`` (instance
    ids) for 2D inputs, ``.nii.gz`` with the input's geometry for volumes,
    ``<concept_slug>/frame_0000.png ...`` and ``mask.nii.gz`` for videos; with ``multilabel``
    also ``segmentations.nii.gz`` + ``segmentations.json``.

    Args:
        input_path: file or DICOM series folder (anything ``medsam3.io.read.read_source`` reads).
        concepts: phrases.
        outdir: output folder (created).
        model: a loaded Segmenter.
        modality: overrides the detected modality.
        multilabel: also write one multi-label NIfTI (2D images and volumes).
        image: the input already read (the CLI reads it before loading the model).

    Returns:
        The summary: input kind, modality, spacing unit, backend, precision, what put a 2D
        radiology image the right way up (``upright``, :mod:`medsam3.models.upright`), and
        per concept presence, n_instances, n_components, instance scores, voxels and area_px /
        area_mm2 / volume_ml (mm only with physical spacing), and the files written.
    """
    image = image if image is not None else read_source(input_path, modality=modality)
    log_unknown_phrases(concepts)
    results = segment_in_display_order(model, image, concepts)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    labels = {c: r.instance_label() for c, r in results.items()}
    entries = {c: _write_concept(r, labels[c], image, outdir, model) for c, r in results.items()}
    summary = {
        "input_kind": image.kind,
        "modality": image.modality,
        "spacing_unit": image.spacing_unit,
        "backend": model.name,
        "checkpoint_digest": model.checkpoint_digest,
        "precision": model.precision,
        "concepts": entries,
    }
    upright = next((r.extra["upright"] for r in results.values() if "upright" in r.extra), None)
    if upright is not None:
        summary |= {"upright": describe(upright), "upright_confidence": upright["confidence"]}
    if multilabel:
        written = write_multilabel_nifti({c: lab for c, (lab, _) in labels.items()}, image, outdir)
        summary["multilabel"] = [p.name for p in written]
    write_text_atomic(outdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_concept(
    result: ConceptResult, labelled: tuple, image: MedImage, outdir: Path, model: Segmenter
) -> dict:
    """Write one concept's masks and return its summary entry (the pipeline's concept row)."""
    label, scores = labelled
    written = write_concept_masks(label, image, result.concept, outdir, formats=("nifti", "png"))
    agent = result.extra if "critic_score" in result.extra else None
    (row, *_) = segment_rows(
        "-", result.concept, label, image, result.presence, scores, model.name, "", agent=agent
    )
    entry = {
        "presence": round(float(result.presence), 4),
        "n_instances": row["n_instances"],
        "n_components": row["n_components"],
        "instance_scores": [round(s, 4) for s in scores],
        **{k: row[k] for k in SIZE_KEYS if row.get(k) is not None},
        "spacing_unit": image.spacing_unit,
        "files": sorted({p.relative_to(outdir).parts[0] for p in written}),
        "nearest_known": result.nearest_known,
    }
    if agent is not None:
        entry |= {k: agent[k] for k in ("critic_score", "agent_rounds", "review", "agent_trace")}
    log.debug(
        "%s: presence %.3f, %d instance(s)", result.concept, result.presence, entry["n_instances"]
    )
    return entry
