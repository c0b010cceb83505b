"""Schemas of the Parquet report tables, with a description for every column.

Every field carries ``{"description": ...}`` in its metadata, so an empty table still has typed,
documented columns. ``TABLE_FILES`` names each table's file inside a reports folder.
"""

from __future__ import annotations

import pyarrow as pa

_I64, _F64, _STR, _BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()


def _f(name: str, typ: pa.DataType, description: str) -> pa.Field:
    """A schema field with its description in the field metadata."""
    return pa.field(name, typ, nullable=True, metadata={"description": description})


STUDIES_SCHEMA = pa.schema(
    [
        _f("study_id", _STR, "pseudonymous study id from the cohort table"),
        _f("kind", _STR, "image, volume or video"),
        _f("modality", _STR, "lower-case modality the study was segmented as (ct, mri, ...)"),
        _f(
            "modality_source",
            _STR,
            "where the modality came from: cohort (table), dicom (header), model (recognised by "
            "the segmentation model) or guess (ingest's heuristic)",
        ),
        _f("modality_predicted", _STR, "modality named by the model when it was asked, else null"),
        _f("modality_confidence", _F64, "the model's probability for modality_predicted"),
        _f(
            "upright",
            _STR,
            "2D CT, MRI and X-ray images (compact backend): the flips and transpose that put "
            "the image the right way up before it was segmented (masks mapped back), 'as stored' "
            "when none were applied; null when not asked",
        ),
        _f("upright_confidence", _F64, "the upright classifier's probability for its best guess"),
        _f("shape", pa.list_(_I64), "array shape in SimpleITK voxel order (z|t, y, x[, c])"),
        _f("spacing", pa.list_(_F64), "SimpleITK (x, y[, z]) spacing, in spacing_unit"),
        _f("spacing_unit", _STR, "mm (physical spacing) or pixel (the source has none)"),
        _f(
            "body_region",
            _STR,
            "body region imaged (head, chest, abdomen, ...) when known; picks default concepts",
        ),
        _f(
            "body_region_source",
            _STR,
            "where body_region came from: dicom (BodyPartExamined), description or field of view",
        ),
        _f("origin", pa.list_(_F64), "SimpleITK (x, y[, z]) origin in mm (LPS for DICOM)"),
        _f("frame_count", _I64, "frames (video), slices (volume) or 1 (image)"),
        _f("source_digest", _STR, "sha256 over the source file bytes"),
        _f("status", _STR, "ok, failed or ingested (stored, not segmented yet)"),
        _f("error", _STR, "scrubbed error message when status is not ok"),
        _f(
            "warnings",
            pa.list_(_STR),
            "ingest warnings: missing slices, ignored files, irregular spacing, guessed "
            "modality, ... (source paths hidden)",
        ),
        _f("question", _STR, "the cohort row's clinical question, else null"),
        _f(
            "answer",
            _STR,
            "the question's answer from the segmented concepts (presence, or size with its unit)",
        ),
    ]
)

SEGMENTS_SCHEMA = pa.schema(
    [
        _f("study_id", _STR, "pseudonymous study id"),
        _f("concept", _STR, "concept phrase as prompted"),
        _f("level", _STR, "'concept' (union of instances) or 'instance'"),
        _f("instance", _I64, "instance number (1-based; null on concept rows)"),
        _f("presence", _F64, "model presence probability of the concept in the study"),
        _f(
            "score",
            _F64,
            "instance score (a component no model instance overlaps: the presence); on concept "
            "rows the best instance score",
        ),
        _f(
            "n_instances",
            _I64,
            "instances (concept rows): the model's instances when they cover the mask, else its "
            "26/8-connected components (io.masks.instance_labels); the same count as the CLI's",
        ),
        _f("n_components", _I64, "26/8-connected components (scipy.ndimage.label, full)"),
        _f("voxels", _I64, "foreground voxels (pixels for images; all frames for video)"),
        _f(
            "volume_ml",
            _F64,
            "voxels x voxel volume / 1000 (volumes with physical spacing; null when spacing_unit "
            "is pixel)",
        ),
        _f("area_px", _I64, "foreground pixels (images only)"),
        _f(
            "area_mm2",
            _F64,
            "pixels x pixel area in mm^2 (images with physical spacing, e.g. DICOM PixelSpacing; "
            "null for PNG/JPEG/TIFF, whose size is area_px)",
        ),
        _f(
            "spacing_unit",
            _STR,
            "mm when the image's spacing is physical, pixel when the source has none (sizes are "
            "then voxels / area_px only)",
        ),
        _f("bbox_voxel", pa.list_(_I64), "(x0, y0[, z0], x1, y1[, z1]) index box, ends exclusive"),
        _f("bbox_mm", pa.list_(_F64), "world-axis box (min xyz, max xyz) of extreme voxel centres"),
        _f("centroid_voxel", pa.list_(_F64), "centre of mass, continuous index (x, y[, z])"),
        _f("centroid_mm", pa.list_(_F64), "centre of mass in physical mm (x, y[, z])"),
        _f("slices", pa.list_(_I64), "slice indices (z) holding foreground (volumes)"),
        _f("frames", pa.list_(_I64), "frame indices (t) holding foreground (videos)"),
        _f("frame_pixels", pa.list_(_I64), "foreground pixels per frame, all frames (videos)"),
        _f(
            "missing_slices",
            _BOOL,
            "the volume's series misses slices (a gap, or slices without pixel data): volumes "
            "and positions are not to be trusted; see the study's warnings",
        ),
        _f(
            "critic_score",
            _F64,
            "the agent's critic: probability that the concept's result is right (Dice >= 0.5, "
            "or empty where absent); concept rows, null when the agent is off",
        ),
        _f("agent_rounds", _I64, "planner rounds the agent ran (concept rows; null when off)"),
        _f(
            "review",
            _BOOL,
            "the agent could not bring critic_score up to its accept threshold: look at this "
            "result (concept rows; null when off)",
        ),
        _f("backend", _STR, "segmentation backend"),
        _f("checkpoint_digest", _STR, "sha256 of the checkpoint (compact: weights and their JSON)"),
    ]
)

AGENT_TRACE_SCHEMA = pa.schema(
    [
        _f("study_id", _STR, "pseudonymous study id"),
        _f("concept", _STR, "concept phrase"),
        _f("round", _I64, "planner round (0: the first result was accepted at once)"),
        _f(
            "action",
            _STR,
            "what was tried: drop, box:peak|prior|parent, relax, tighten, reprompt:<phrase>, "
            "crop_zoom, mllm / mllm:fallback (notes), stop (the final decision)",
        ),
        _f("critic_before", _F64, "critic score of the result before the action"),
        _f("critic_after", _F64, "critic score of the action's candidate (null: not run)"),
        _f(
            "decision",
            _STR,
            "accepted (replaced the result), rejected, skipped, note; on stop rows accepted "
            "(critic >= accept) or review",
        ),
        _f("reason", _STR, "why the action was proposed, or why it was skipped"),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        _f("study_id", _STR, "pseudonymous study id"),
        _f("concept", _STR, "concept phrase"),
        _f("dice", _F64, "Dice; 1 when both masks are empty, 0 when one is"),
        _f("iou", _F64, "intersection over union; same empty-mask rules as dice"),
        _f("nsd", _F64, "normalised surface Dice at nsd_tolerance_mm (MONAI, sub-voxel)"),
        _f("hd95", _F64, "95th percentile Hausdorff distance in mm; 0 both empty, NaN one empty"),
        _f("nsd_tolerance_mm", _F64, "NSD tolerance in mm"),
        _f("pred_voxels", _I64, "predicted foreground voxels"),
        _f("truth_voxels", _I64, "ground-truth foreground voxels"),
        _f("presence", _F64, "model presence probability"),
        _f("pred_present", _BOOL, "presence >= the presence threshold"),
        _f("truth_present", _BOOL, "ground truth has foreground"),
        _f("presence_correct", _BOOL, "pred_present == truth_present"),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        _f("study_id", _STR, "pseudonymous study id"),
        _f("stage", _STR, "pipeline stage that failed (ingest, segment, export, metrics, ...)"),
        _f("error", _STR, "error type and scrubbed message (no UIDs or dates)"),
        _f("time", _STR, "UTC ISO-8601 time the failure was recorded"),
    ]
)

PROVENANCE_SCHEMA = pa.schema(
    [
        _f("job", _STR, "job name"),
        _f("package_version", _STR, "medsam3.__version__"),
        _f("git_commit", _STR, "source commit ('-dirty' when modified), null outside git"),
        _f("config_sha256", _STR, "sha256 of the canonical JSON config"),
        _f("backend", _STR, "segmentation backend"),
        _f("checkpoint_digest", _STR, "sha256 of the checkpoint (compact: weights and their JSON)"),
        _f("start", _STR, "UTC ISO-8601 start"),
        _f("end", _STR, "UTC ISO-8601 end"),
        _f("duration_s", _F64, "end - start in seconds"),
        _f("host", _STR, "host name"),
        _f("python_version", _STR, "Python version"),
        _f("torch_version", _STR, "torch version, null without torch"),
        _f(
            "warnings",
            pa.list_(_STR),
            "configuration warnings of the run (the public default salt or the demo ground "
            "truth used on a user's cohort)",
        ),
    ]
)

TABLE_FILES = {
    "studies": ("studies.parquet", STUDIES_SCHEMA),
    "segments": ("segments.parquet", SEGMENTS_SCHEMA),
    "metrics": ("metrics.parquet", METRICS_SCHEMA),
    "failures": ("failures.parquet", FAILURES_SCHEMA),
    "provenance": ("provenance.parquet", PROVENANCE_SCHEMA),
    "agent_trace": ("agent_trace.parquet", AGENT_TRACE_SCHEMA),
}
