"""The sam3 backend: SAM 3 / MedSAM3 checkpoints through Hugging Face transformers.

2D images: the image is encoded once per intensity window and the vision features are reused
for every concept; SAM 3's DETR detector returns instances (mask, box, score = query
probability x presence probability) and a presence probability from its presence token.
Volumes and videos: see :mod:`medsam3.models.sam3_video` (tracking with Sam3VideoModel, or
independent per-slice detection). Checkpoints: see :mod:`medsam3.models.sam3_checkpoint`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.utils import is_kernels_available

from medsam3.models.base import ConceptResult, Instance, Segmenter, mask_box
from medsam3.models.batching import auto_batch_size, in_batches
from medsam3.models.inputs import InputError, check_array, check_concepts, infer_kind
from medsam3.models.preprocess import group_by_ct_window, to_uint8_rgb
from medsam3.models.sam3_checkpoint import (
    apply_lora,
    check_checkpoint_dir,
    check_lora_dir,
    fingerprint,
    load_processor,
    load_sam3_modules,
    random_video_model,
    weight_files,
)
from medsam3.models.sam3_import import MEDSAM3_ALPHA, fold_lora, lora_updates, read_tensor_file
from medsam3.models.sam3_video import segment_sam3_stack
from medsam3.types import Kind

log = logging.getLogger(__name__)
VOLUME_MODES = ("propagate", "per_slice")


@dataclass
class Detections:
    """SAM 3 detections of one concept on one 2D plane.

    Attributes:
        presence: presence-token probability in [0, 1].
        scores: (n,) float32 instance scores (query probability x presence), above threshold.
        boxes: (n, 4) float32 predicted (x0, y0, x1, y1) boxes in input pixels.
        masks: (n, y, x) bool instance masks at the input resolution.
    """

    presence: float
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


class Sam3Segmenter(Segmenter):
    """Text-promptable segmenter over a SAM 3 detector (+ optional Sam3VideoModel tracker)."""

    name = "sam3"

    def __init__(
        self,
        detector,
        processor,
        video_model=None,
        device: str = "cpu",
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        volume_mode: str = "propagate",
        scan_slices: int = 8,
        concept_batch: int = 8,
        track_thresholds: tuple[float, float] | None = None,
        checkpoint_digest: str = "",
        encode_batch: int | None = None,
    ) -> None:
        """Wrap loaded models; use :func:`build_sam3` or :func:`build_random_sam3` instead.

        Args:
            detector: transformers Sam3Model in eval mode.
            processor: transformers Sam3Processor (image processor + CLIP tokenizer).
            video_model: Sam3VideoModel sharing ``detector``, or None (no tracking).
            device: torch device for inference.
            score_threshold: keep instances whose score exceeds this (0..1).
            mask_threshold: binarise mask probabilities at this value.
            volume_mode: "propagate" (track from the strongest slice both ways) or "per_slice".
            scan_slices: slices scanned to find the strongest one before propagating.
            concept_batch: concepts decoded together per forward pass.
            track_thresholds: (detection, new object) score thresholds of the tracker; None keeps
                the checkpoint's (score_threshold_detection, new_det_thresh), e.g. (0.5, 0.7).
            checkpoint_digest: fingerprint of the checkpoint files.
            encode_batch: slices/frames per vision-encoder pass (per_slice mode and the scan
                before propagation); None sizes it to the device's free memory
                (:mod:`medsam3.models.batching`), halved on out-of-memory.
        """
        if volume_mode not in VOLUME_MODES:
            raise ValueError(f"volume_mode must be one of {VOLUME_MODES}, got {volume_mode!r}")
        self.detector, self.processor, self.video_model = detector, processor, video_model
        self.device = torch.device(device)
        self.dtype = next(detector.parameters()).dtype
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.volume_mode, self.scan_slices = volume_mode, scan_slices
        self.concept_batch = max(1, concept_batch)
        self.checkpoint_digest = checkpoint_digest
        self.image_size = int(processor.image_processor.size["height"])
        self.encode_batch = encode_batch
        if video_model is not None and track_thresholds is not None:
            video_model.score_threshold_detection, video_model.new_det_thresh = track_thresholds
        if video_model is not None and not is_kernels_available():
            # without the `kernels` package transformers computes an (N, N, 288, 288) mask-IoU
            # tensor and then keeps every detection anyway; skipping it gives the same result
            video_model.det_nms_thresh = 0.0

    @property
    def precision(self) -> str:
        """dtype of the weights SAM 3 runs in ("float32", "bfloat16", ...)."""
        return str(self.dtype).removeprefix("torch.")

    # ----------------------------------------------------------------- numpy API
    def segment(
        self,
        array: np.ndarray,
        concepts: list[str],
        modality: str | None = None,
        spacing: tuple[float, ...] | None = None,
        boxes: dict[str, list] | None = None,
        points: dict[str, list] | None = None,
        kind: Kind | None = None,
    ) -> dict[str, ConceptResult]:
        """Segment every instance of each concept (see :meth:`Segmenter.segment`).

        Args:
            array: (y, x[, c]) image, (z, y, x) volume or (t, y, x[, c]) video.
            concepts: phrases; each is a SAM 3 text prompt.
            modality: "ct" (HU windows per concept), "mri", ... (see medsam3.models.preprocess).
            spacing: unused by SAM 3 (kept for the interface).
            boxes: per-concept (x0, y0, x1, y1) pixel box prompts; 2D images only.
            points: not supported by SAM 3's concept detector; must be empty.
            kind: "image", "volume" or "video"; inferred from the shape when None.

        Returns:
            Mapping phrase -> ConceptResult; masks have the input's spatial shape.
        """
        kind = infer_kind(np.asarray(array), kind)
        array = check_array(array, kind)
        concepts = check_concepts(concepts)
        if points and any(points.values()):
            raise InputError("the sam3 backend takes text and box prompts; pass boxes, not points")
        boxes = {k: v for k, v in (boxes or {}).items() if v}
        if boxes and kind != "image":
            raise InputError("box prompts are supported on 2D images only; omit boxes= here")
        unknown = set(boxes) - set(concepts)
        if unknown:
            raise InputError(f"boxes given for {sorted(unknown)}, which are not in concepts")
        for concept, box_list in boxes.items():
            for box in box_list:
                if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                    raise InputError(
                        f"box {box!r} for {concept!r} must be (x0, y0, x1, y1) pixels, x1>x0, y1>y0"
                    )
        if kind == "image":
            return self._segment_image(array, concepts, modality, boxes)
        return segment_sam3_stack(self, array, concepts, modality, kind)

    # ----------------------------------------------------------------- building blocks
    @torch.inference_mode()
    def encode(self, rgb_planes: list[np.ndarray]):
        """Run the vision encoder once on uint8 RGB planes.

        Args:
            rgb_planes: list of (y, x, 3) uint8 arrays (any sizes; resized by the processor).

        Returns:
            Sam3VisionEncoderOutput with batch size len(rgb_planes).
        """
        pixels = self.pixel_values(rgb_planes)
        return self.detector.get_vision_features(pixel_values=pixels)

    def encoded(self, rgb_planes: list[np.ndarray]) -> Iterator[tuple[int, object]]:
        """Encode planes in batches (:attr:`encode_batch`) and yield them one by one.

        Args:
            rgb_planes: n (y, x, 3) uint8 planes.

        Yields:
            (index, Sam3VisionEncoderOutput of batch size 1) for each plane, in order; the
            features equal those of :meth:`encode` on the plane alone.
        """
        if self.encode_batch is None:
            self.encode_batch = auto_batch_size(self.device, self._item_bytes())

        def remember(size: int) -> None:
            self.encode_batch = size

        batches = in_batches(rgb_planes, self.encode, self.encode_batch, remember)
        for start, _stop, vision in batches:
            for i in range(vision.last_hidden_state.shape[0]):
                yield start + i, vision_item(vision, i)

    def _item_bytes(self) -> int:
        """Rough peak activation memory of one encoded plane: tokens x width x 48 values."""
        vit = self.detector.config.vision_config.backbone_config
        tokens = (self.image_size // vit.patch_size) ** 2
        return tokens * vit.hidden_size * 48 * torch.finfo(self.dtype).bits // 8

    def pixel_values(self, rgb_planes: list[np.ndarray]) -> torch.Tensor:
        """(n, 3, S, S) normalised model input for uint8 RGB planes (S = model image size)."""
        # torch refuses read-only arrays (e.g. from PIL); copy only those
        planes = [np.require(p, requirements=["C", "W"]) for p in rgb_planes]
        enc = self.processor.image_processor(images=planes, return_tensors="pt")
        return enc["pixel_values"].to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_text(self, concepts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features of the phrases, computed once and reused for every plane.

        Args:
            concepts: n phrases.

        Returns:
            (features (n, 32, hidden) float, attention mask (n, 32) long).
        """
        enc = self.processor.tokenizer(
            concepts, padding="max_length", max_length=32, truncation=True, return_tensors="pt"
        )
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        feats = self.detector.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        return feats, mask

    @torch.inference_mode()
    def detect(self, vision, text, size: tuple[int, int], box_prompts=None) -> list[Detections]:
        """Decode concepts on one encoded plane, ``concept_batch`` concepts per forward pass.

        Args:
            vision: Sam3VisionEncoderOutput of batch size 1.
            text: (features, attention mask) from :meth:`encode_text`, n concepts.
            size: (y, x) size of the input plane; masks and boxes are returned at this size.
            box_prompts: list of n lists of (x0, y0, x1, y1) pixel boxes (or None).

        Returns:
            n Detections, in the order of the text features.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        feats, mask = text
        out: list[Detections] = []
        step = self.concept_batch if not box_prompts or not any(box_prompts) else 1
        for start in range(0, feats.shape[0], step):
            sl = slice(start, start + step)
            n = feats[sl].shape[0]
            kwargs = {}
            if box_prompts and box_prompts[start]:
                kwargs = self._box_inputs(box_prompts[start], size)
            outputs = self.detector(
                vision_embeds=expand_vision(vision, n),
                text_embeds=BaseModelOutputWithPooling(pooler_output=feats[sl]),
                attention_mask=mask[sl],
                **kwargs,
            )
            out.extend(self._post_process(outputs, size))
        return out

    def _box_inputs(self, boxes: list, size: tuple[int, int]) -> dict:
        """Normalised (cx, cy, w, h) box prompt tensors for one concept on a (y, x) plane."""
        enc = self.processor(
            original_sizes=[list(size)], input_boxes=[[list(map(float, b)) for b in boxes]]
        )
        return {
            "input_boxes": enc["input_boxes"].to(self.device, self.dtype),
            "input_boxes_labels": enc["input_boxes_labels"].to(self.device),
        }

    def _post_process(self, outputs, size: tuple[int, int]) -> list[Detections]:
        """Processor post-processing to numpy Detections at the plane's (y, x) size."""
        n = outputs.pred_logits.shape[0]
        results = self.processor.post_process_instance_segmentation(
            outputs,
            threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            target_sizes=[tuple(size)] * n,
        )
        presence = outputs.presence_logits.float().sigmoid()[:, 0].cpu().numpy()
        return [
            Detections(
                presence=float(presence[i]),
                scores=r["scores"].float().cpu().numpy(),
                boxes=r["boxes"].float().cpu().numpy().reshape(-1, 4),
                masks=r["masks"].bool().cpu().numpy(),
            )
            for i, r in enumerate(results)
        ]

    # ----------------------------------------------------------------- 2D images
    def _segment_image(self, image, concepts, modality, boxes) -> dict[str, ConceptResult]:
        """Encode once per pre-processing group, decode every concept on the shared features."""
        size = image.shape[:2]
        results: dict[str, ConceptResult] = {}
        for key, group in group_by_ct_window(concepts, modality).items():
            t0 = time.perf_counter()
            vision = self.encode([to_uint8_rgb(image, modality, group[0])])
            t1 = time.perf_counter()
            dets = self.detect(vision, self.encode_text(group), size, [boxes.get(c) for c in group])
            t2 = time.perf_counter()
            for concept, det in zip(group, dets, strict=True):
                extra = {"ct_window": list(key) if key else None, "encode_s": t1 - t0}
                extra["decode_s"] = (t2 - t1) / len(group)
                results[concept] = image_result(concept, det, size, extra)
        return {c: results[c] for c in concepts}


def vision_item(vision, i: int):
    """Item ``i`` of a batched vision encoder output, as a batch of one (views)."""
    return type(vision)(
        last_hidden_state=vision.last_hidden_state[i : i + 1],
        fpn_hidden_states=tuple(t[i : i + 1] for t in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(t[i : i + 1] for t in vision.fpn_position_encoding),
    )


def expand_vision(vision, n: int):
    """Vision encoder output repeated (as views) to batch size n."""
    if n == 1:
        return vision
    return type(vision)(
        last_hidden_state=vision.last_hidden_state.expand(n, *vision.last_hidden_state.shape[1:]),
        fpn_hidden_states=tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(
            t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding
        ),
    )


def image_result(concept: str, det: Detections, size, extra: dict) -> ConceptResult:
    """ConceptResult for one plane: non-empty instance masks, union mask, presence.

    Args:
        concept: the phrase.
        det: its detections.
        size: (y, x) plane size.
        extra: backend details to attach.

    Returns:
        ConceptResult with a (y, x) uint8 union mask; boxes are tight boxes of each mask.
    """
    union = np.zeros(size, np.uint8)
    instances = []
    for mask, score in zip(det.masks, det.scores, strict=True):
        if mask.any():
            instances.append(Instance(mask=mask, box=mask_box(mask), score=float(score)))
            union |= mask.astype(np.uint8)
    instances.sort(key=lambda inst: -inst.score)
    extra = dict(extra, n_detections=int(len(det.scores)))
    return ConceptResult(concept, union, float(det.presence), instances, [], extra)


def build_sam3(
    checkpoint: str | Path | None,
    device: str = "cpu",
    lora: str | Path | None = None,
    dtype=None,
    load_tracker: bool = True,
    lora_alpha: float = MEDSAM3_ALPHA,
    **kw,
) -> Sam3Segmenter:
    """Load a local SAM 3 / MedSAM3 checkpoint directory (safetensors only, no hub, no pickles).

    Args:
        checkpoint: directory with config.json (model_type "sam3" or "sam3_video"), safetensors
            weights and optionally tokenizer / processor files.
        device: torch device, e.g. "cpu" or "cuda".
        lora: optional LoRA, merged into the weights on load: a peft adapter directory
            (adapter_model.safetensors), or a MedSAM3 LoRA file (``best_lora_weights.pt``, read
            with weights_only=True, or .safetensors; see :mod:`medsam3.models.sam3_import`).
        dtype: torch dtype or name ("bfloat16") for the weights; None keeps the stored dtype.
        load_tracker: load the tracker of a sam3_video checkpoint (needed for propagation).
        lora_alpha: alpha of a MedSAM3 LoRA file (its updates are scaled by alpha / rank).
        **kw: Sam3Segmenter options (score_threshold, mask_threshold, volume_mode, ...).

    Returns:
        A ready Sam3Segmenter.
    """
    folder, config = check_checkpoint_dir(checkpoint)
    lora_file = Path(lora).expanduser() if lora is not None and Path(lora).is_file() else None
    lora_dir = check_lora_dir(lora) if lora is not None and lora_file is None else None
    detector, video = load_sam3_modules(folder, config, dtype=dtype, load_tracker=load_tracker)
    files = [folder / "config.json", *weight_files(folder)]
    if lora_dir is not None:
        detector, video = apply_lora(detector, video, lora_dir)
        files += [lora_dir / "adapter_config.json", lora_dir / "adapter_model.safetensors"]
    if lora_file is not None:  # a MedSAM3 LoRA file, folded into the detector's weights
        fold_lora(detector, lora_updates(read_tensor_file(lora_file), lora_alpha))
        files.append(lora_file)
    detector.to(device)
    if video is not None:
        video.to(device)
    processor = load_processor(folder, int(detector.config.image_size))
    return Sam3Segmenter(
        detector, processor, video, device=device, checkpoint_digest=fingerprint(files), **kw
    )


def build_random_sam3(scale: str = "tiny", seed: int = 0, dtype=None, **kw) -> Sam3Segmenter:
    """A randomly initialised SAM 3 (detector + tracker) for tests and benchmarks; no download.

    Args:
        scale: "tiny" (~8M parameters, 112 px, fast on CPU) or "full" (default config,
            ~860M parameters, 1008 px).
        seed: initialisation seed (the weights are drawn in float32, then cast).
        dtype: torch dtype or name ("bfloat16") for the weights; None keeps float32.
        **kw: Sam3Segmenter options (score_threshold, volume_mode, device, ...).

    Returns:
        Sam3Segmenter with random weights (outputs are meaningless, shapes are real).
    """
    video = random_video_model(scale, seed)
    processor = load_processor(None, int(video.config.image_size))
    device = kw.pop("device", "cpu")
    video.to(device, getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    digest = f"random:{scale}:{seed}"
    return Sam3Segmenter(
        video.detector_model, processor, video, device=device, checkpoint_digest=digest, **kw
    )
