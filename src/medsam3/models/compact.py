"""The compact backend: LiteMedSAM encoder/decoder + MiniLM phrase embeddings + a concept head.

Per 2D plane: the plane is mapped to uint8 RGB (uint8 data pass through; CT in HU is windowed
per concept, so concepts sharing a window share one encoding), encoded ONCE by LiteMedSAM, and
every phrase is decoded by the concept head (presence + dense mask). Above the presence threshold,
connected components of the dense mask become instances; each is re-segmented by the LiteMedSAM
mask decoder from its box, and the decoder mask is kept where it agrees with the dense mask
(IoU gate), else the dense mask is kept (thin, ring-shaped or crowded structures).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from scipy import ndimage

from medsam3.models.base import ConceptResult, Instance, Segmenter
from medsam3.models.batching import auto_batch_size, in_batches
from medsam3.models.concept_head import ConceptHead, HeadConfig
from medsam3.models.concepts import lateral_pair, nearest, parent_of, resolve, tiles_of
from medsam3.models.feature_cache import encode_cached
from medsam3.models.inputs import InputError, check_array, check_concepts, infer_kind
from medsam3.models.litemedsam import (
    LiteMedSAM,
    Prepared,
    logits_to_mask,
    logits_to_original,
    prepare_image,
)
from medsam3.models.modality import ModalityGuess, ModalityHead, modality_features
from medsam3.models.orientation import DisplayOrder
from medsam3.models.phrases import canonical, condition
from medsam3.models.preprocess import group_by_ct_window, to_uint8_rgb
from medsam3.models.propagate import segment_compact_stack, slice_stride
from medsam3.models.text_encoder import shared_text_encoder
from medsam3.models.upright import MODALITIES as UPRIGHT_MODALITIES
from medsam3.models.upright import Upright, load_upright, results_to_stored, to_display

PLANE_BYTES = 200 * 2**20  # generous peak activation memory of one plane (encoder + head)
TILE_SIDE = 0.6  # thin-structure tiles: share of the image side (2 x 2 tiles overlap by 0.2)


# Volumes with a known slice spacing are encoded on key slices about this far apart and
# interpolated between (propagate.slice_stride); 0 or None encodes every slice.
KEY_SPACING_MM = 3.0


def default_checkpoint() -> Path:
    """Path of the head shipped in medsam3/weights."""
    return Path(str(resources.files("medsam3").joinpath("weights/compact_head.safetensors")))


def load_head(checkpoint: str | Path | None = None) -> tuple[ConceptHead, str, dict]:
    """Load a concept head from a .safetensors file (never unpickles).

    Args:
        checkpoint: path; None = the shipped head.

    Returns:
        (head in eval mode, digest, sibling JSON info or {}). The digest is the sha256 of the
        weights followed by the JSON, which holds what changes outputs without changing the
        weights (calibration, mask cut, no_refine), so a refit reads as another checkpoint.
        When the file also holds a modality classifier (``modality.*`` tensors),
        info["modality_head"] is it.
    """
    path = Path(checkpoint) if checkpoint else default_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(
            f"compact head checkpoint {path} does not exist; pass checkpoint=None for the shipped "
            "head or a .safetensors file written by medsam3.training.train"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a safetensors file ({err}); only .safetensors heads are accepted "
            "(pickled .pt/.pth checkpoints are refused for safety)"
        ) from err
    info_path = path.with_suffix(".json")
    info_text = info_path.read_bytes() if info_path.is_file() else b""
    info = json.loads(info_text) if info_text else {}
    head = ConceptHead(HeadConfig(**info.get("config", {})))
    modality = {
        k.removeprefix("modality."): v for k, v in state.items() if k.startswith("modality.")
    }
    try:
        head.load_state_dict({k: v for k, v in state.items() if not k.startswith("modality.")})
        if modality:
            info["modality_head"] = ModalityHead(info["modality_classes"]).eval()
            info["modality_head"].load_state_dict(modality)
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{path} does not hold a compact concept head: {err}") from err
    return head.eval(), hashlib.sha256(path.read_bytes() + info_text).hexdigest(), info


@dataclass
class PlaneState:
    """One encoded plane: geometry, LiteMedSAM embedding and head image features."""

    prep: Prepared
    embedding: torch.Tensor
    feats: dict
    modality: str | None = None  # given, or recognised from the plane: picks the calibration


class CompactSegmenter(Segmenter):
    """LiteMedSAM + MiniLM + concept head; see the module docstring.

    Args:
        head: trained concept head.
        sam: LiteMedSAM wrapper.
        digest: fingerprint of the head (load_head: its weights and JSON).
        presence_threshold: presence above which a concept is reported present.
        iou_gate: minimum IoU between decoder and dense masks to keep the decoder mask.
        max_refine: instances refined by the decoder per concept (largest first).
        refine_min_share: components smaller than this share of the largest one keep their
            dense shape; the decoder costs ~0.06 s per box on a CPU. On val, 0.05-0.2 all sent
            22 boxes instead of 52 over 75 pairs, with mean Dice 0.89812 instead of 0.89806.
        min_area: components smaller than max(min_area, 1e-4 of the image) pixels are dropped.
        max_instances: instances reported per concept (largest first; the mask keeps all).
        no_refine: phrases whose dense mask is kept without decoder refinement.
        feature_cache: read/write LiteMedSAM embeddings under $MEDSAM3_CACHE (evaluation).
        modality_head: classifier naming the modality of a plane (None: not recognised).
        calibration: modality -> (scale, shift) of the presence logit, fitted on val so that
            presence 0.5 means the same in every modality; "default" for other modalities.
        key_spacing_mm: volumes with known spacing are encoded every ~this many mm and
            interpolated between (:func:`medsam3.models.propagate.slice_stride`); None encodes
            every slice.
        mask_margin: where the head is unsure of a mask (its peak logit below this), the dense
            mask is cut at ``peak - mask_margin`` instead of 0 (:meth:`dense_threshold`);
            None always cuts at 0. Fitted on val with the head (``mask_margin`` in its JSON).
        upright: classifier that puts CT, MRI and X-ray images the right way up before they
            are segmented (:mod:`medsam3.models.upright`); None segments them as stored.
    """

    name = "compact"

    def __init__(
        self,
        head: ConceptHead,
        sam: LiteMedSAM,
        digest: str = "",
        presence_threshold: float = 0.5,
        iou_gate: float = 0.6,
        max_refine: int = 16,
        refine_min_share: float = 0.1,
        min_area: int = 4,
        max_instances: int = 256,
        no_refine: tuple[str, ...] = (),
        feature_cache: bool = False,
        modality_head: ModalityHead | None = None,
        calibration: dict[str, tuple[float, float]] | None = None,
        key_spacing_mm: float | None = KEY_SPACING_MM,
        mask_margin: float | None = None,
        upright: Upright | None = None,
    ) -> None:
        self.head, self.sam, self.checkpoint_digest = head, sam, digest
        self.presence_threshold, self.iou_gate = presence_threshold, iou_gate
        self.max_refine, self.min_area, self.no_refine = max_refine, min_area, set(no_refine)
        self.max_instances, self.refine_min_share = max_instances, refine_min_share
        self.device = sam.device
        self.head.to(self.device)
        self.text = shared_text_encoder()
        self.feature_cache = feature_cache
        self.modality_head = modality_head.to(self.device) if modality_head is not None else None
        self.calibration = {k.lower(): tuple(v) for k, v in (calibration or {}).items()}
        self.key_spacing_mm, self.mask_margin = key_spacing_mm, mask_margin
        self.upright = upright
        self._encodings: dict | None = None  # pixels -> encoding, inside shared_encodings
        self.encode_batch: int | None = None  # planes per encoder pass; set on first use
        # phrases per 256 px head decode: one at a time on a CPU (about 2x faster than a batch
        # of 4, the 256 px maps stay in cache), 64 on a GPU
        self.fine_batch = 1 if self.device.type == "cpu" else 64
        if feature_cache and sam.precision != "float32":
            raise ValueError("the feature cache holds float32 encodings: use precision float32")

    @property
    def precision(self) -> str:
        """Compute precision of LiteMedSAM ("float32" or "bfloat16"; the head is float32)."""
        return self.sam.precision

    # --- plane-level verbs (used by propagate.py too) ---------------------------------------
    @torch.inference_mode()
    def encode_plane(self, rgb: np.ndarray, modality: str | None = None) -> PlaneState:
        """Encode one (y, x, 3) uint8 plane once: LiteMedSAM embedding + head image features.

        Args:
            rgb: the plane.
            modality: its modality when known; else it is recognised from the plane.
        """
        if self._encodings is None:
            prep, emb, feats = self._encode(rgb)
        else:
            key = (hashlib.sha1(np.ascontiguousarray(rgb).data).hexdigest(), rgb.shape)
            if key not in self._encodings:
                self._encodings[key] = self._encode(rgb)
            prep, emb, feats = self._encodings[key]
        state = PlaneState(prep, emb, feats, modality)
        if modality is None and self.modality_head is not None:
            state.modality = self._recognise(state).modality
        return state

    def _encode(self, rgb: np.ndarray) -> tuple[Prepared, torch.Tensor, dict]:
        prep = prepare_image(rgb)
        if self.feature_cache:
            emb = encode_cached(self.sam, prep)["embedding"][None].float().to(self.device)
        else:
            emb = self.sam.encode(prep)
        return prep, emb, self.head.image_features(emb, prep.tensor.to(self.device))

    @torch.inference_mode()
    def encode_planes(self, rgbs: list[np.ndarray], modality: str | None = None):
        """Encode planes in batches sized to the device (:mod:`medsam3.models.batching`).

        The same as :meth:`encode_plane` on each plane, up to float rounding; a GPU runs one
        encoder pass per batch instead of one per plane, and an out-of-memory error halves the
        batch. With the feature cache on (evaluation), planes are encoded one by one.

        Returns:
            One PlaneState per plane, in order.
        """
        if self.feature_cache or len(rgbs) < 2:
            return [self.encode_plane(rgb, modality) for rgb in rgbs]
        if self.encode_batch is None:
            self.encode_batch = auto_batch_size(self.device, PLANE_BYTES)
        preps = [prepare_image(rgb) for rgb in rgbs]
        states = []

        def remember(size: int) -> None:
            self.encode_batch = size

        batches = in_batches(preps, self._encode_batch, self.encode_batch, remember)
        for _start, _stop, part in batches:
            states += part
        for state in states:
            state.modality = modality
            if modality is None and self.modality_head is not None:
                state.modality = self._recognise(state).modality
        return states

    def _encode_batch(self, preps: list[Prepared]) -> list[PlaneState]:
        frames = torch.cat([p.tensor for p in preps]).to(self.device)
        emb = self.sam.encode_frames(frames)
        feats = self.head.image_features(emb, frames)
        return [
            PlaneState(p, emb[i : i + 1], {k: v[i : i + 1] for k, v in feats.items()})
            for i, p in enumerate(preps)
        ]

    def _recognise(self, state: PlaneState) -> ModalityGuess:
        frame = state.prep.tensor.to(self.device)
        features = modality_features(state.embedding, frame, [state.prep.resized])
        return self.modality_head.guess(features)[0]

    def recognise_modality(self, array: np.ndarray) -> ModalityGuess:
        """The modality of a 2D image, or of the middle slice / frame of a volume or video.

        Args:
            array: (y, x[, c]) image, (z, y, x) volume or (t, y, x[, c]) video, any dtype.

        Returns:
            The recognised modality and its probability.
        """
        if self.modality_head is None:
            raise InputError("this compact head has no modality classifier (retrain it)")
        data = np.asarray(array)
        plane = data[len(data) // 2] if infer_kind(data) != "image" else data
        rgb = to_uint8_rgb(plane[..., 0] if plane.ndim == 3 and plane.shape[-1] == 1 else plane)
        return self._recognise(self.encode_plane(rgb, modality="unknown"))

    def presence(self, logits: torch.Tensor, modality: str | None) -> np.ndarray:
        """Calibrated presence probabilities of head logits for a plane of a modality."""
        key = (modality or "").lower()
        scale, shift = self.calibration.get(key, self.calibration.get("default", (1.0, 0.0)))
        return torch.sigmoid(logits * scale + shift).cpu().numpy()

    @torch.inference_mode()
    def detect(
        self, state: PlaneState, phrases: list[str], mask_threshold: float | None = None
    ) -> tuple[np.ndarray, list[torch.Tensor | None]]:
        """Presence and dense logits for phrases on an encoded plane.

        Args:
            mask_threshold: compute dense logits only for phrases whose presence reaches it
                (the others' are None): the 256 px part of the head costs most of its time and
                an absent phrase gets no mask. None computes them for every phrase.

        Returns:
            (K,) calibrated presence probabilities and K (1, 256, 256) dense logits (padded
            frame), or None where skipped.
        """
        index = torch.zeros(len(phrases), dtype=torch.long, device=self.device)
        logits, coarse, hidden = self.head.locate(state.feats, self._text(phrases), index)
        presence = self._with_parent_presence(state, phrases, self.presence(logits, state.modality))
        wanted = [
            k
            for k in range(len(phrases))
            if mask_threshold is None or presence[k] >= mask_threshold
        ]
        dense: list[torch.Tensor | None] = [None] * len(phrases)
        step = self.fine_batch
        for i in range(0, len(wanted), step):
            rows = torch.as_tensor(wanted[i : i + step], device=self.device)
            fine = self.head.fine_mask(state.feats, coarse[rows], hidden[rows], index[rows])
            for k, logits_k in zip(wanted[i : i + step], fine, strict=True):
                dense[k] = logits_k
        return presence, dense

    def _text(self, phrases: list[str]) -> torch.Tensor:
        """Conditioned MiniLM vectors of phrases, on the model's device."""
        return torch.from_numpy(condition(phrases, self.text)).to(self.device)

    def _with_parent_presence(self, state: PlaneState, phrases: list[str], presence: np.ndarray):
        """A subtype with no training masks of its own is present where its parent is.

        The vocabulary sets ``parent`` only for such subtypes ("neoplastic polyp" -> "polyp").
        The head cannot tell a subtype from its parent, and its presence score also reads the
        phrase wording, so an unseen subtype would score near 0 on its own images. Its
        presence is therefore the larger of its own and its parent's; its mask stays its own.
        """
        parents = {k: q for k, p in enumerate(phrases) if (q := parent_of(p))}
        if not parents:
            return presence
        names = sorted(set(parents.values()))
        logits, _ = self.head.decode(state.feats, self._text(names), coarse_only=True)
        by_name = dict(zip(names, self.presence(logits, state.modality), strict=True))
        out = presence.copy()
        for k, parent in parents.items():
            out[k] = max(out[k], by_name[parent])
        return out

    def dense_threshold(self, logits: torch.Tensor, relative: bool = True) -> float:
        """Logit cut of a dense mask: 0, or ``peak - mask_margin`` where the peak is lower.

        A head unsure of a small or faint structure on a 2D image (its peak logit below the
        margin) still marks where it is most sure; on val this raised Dice most for CT/MRI
        anatomy (docs/model_card.md, "Mask cut"). Volumes and videos pass ``relative=False``
        (cut at 0): there the empty mask of a slice where the head is unsure ends the object.
        """
        if not relative or self.mask_margin is None or not logits.numel():
            return 0.0
        return min(0.0, float(logits.max()) - self.mask_margin)

    @torch.inference_mode()
    def dense_mask(
        self, state: PlaneState, dense: torch.Tensor, offset: float = 0.0, relative: bool = True
    ) -> np.ndarray:
        """(1, 256, 256) dense logits -> (y, x) bool mask in original pixels, cut at
        :meth:`dense_threshold` + ``offset`` (negative relaxes, positive tightens)."""
        logits = logits_to_original(dense[None].float(), state.prep)[0, 0]
        return (logits > self.dense_threshold(logits, relative) + offset).cpu().numpy()

    @torch.inference_mode()
    def decoder_masks(self, state: PlaneState, boxes=None, points=None) -> np.ndarray:
        """LiteMedSAM decoder masks from prompts in original pixels (boxes in chunks of 32).

        Args:
            boxes: (n, 4) x0, y0, x1, y1 boxes, or None.
            points: (m, 2) x, y foreground points, or None.

        Returns:
            (n, y, x) bool masks in original pixels (one per box; one for a point set).
        """
        if boxes is None:
            logits, _ = self.sam.decode(state.embedding, state.prep, points=points)
            return logits_to_mask(logits, state.prep)
        parts = []
        for i in range(0, len(boxes), 32):
            logits, _ = self.sam.decode(state.embedding, state.prep, boxes=boxes[i : i + 32])
            parts.append(logits_to_mask(logits, state.prep))
        return np.concatenate(parts)

    @torch.inference_mode()
    def decoder_union(self, state: PlaneState, boxes: np.ndarray) -> np.ndarray:
        """Union of the decoder masks of many boxes (memory-bounded), (y, x) bool."""
        out = np.zeros(state.prep.original, bool)
        for i in range(0, len(boxes), 32):
            out |= self.decoder_masks(state, boxes=boxes[i : i + 32]).any(0)
        return out

    @torch.inference_mode()
    def refine(
        self, state: PlaneState, dense: torch.Tensor, phrase: str, relative: bool = True
    ) -> np.ndarray:
        """Dense logits -> final (y, x) bool mask: decoder-refined, then kept to its side.

        Args:
            state: encoded plane.
            dense: (1, 256, 256) dense logits in the padded frame.
            phrase: the concept (per-phrase refinement switch; side of "left kidney").
            relative: cut an unsure mask below its peak (:meth:`dense_threshold`; 2D images).

        Returns:
            (y, x) bool mask in original pixels.
        """
        mask = self._refine_components(state, dense, phrase, relative)
        return self._keep_side(state, mask, phrase, relative)

    @torch.inference_mode()
    def _keep_side(
        self, state: PlaneState, mask: np.ndarray, phrase: str, relative: bool = True
    ) -> np.ndarray:
        """Keep a "left X" / "right X" mask to the patient's side of the paired organ X.

        The head tells left from right poorly (it segments both lungs for "left lung"). Where
        the mask of X shows one organ on each side of its midline, the result is (own mask |
        X mask) on the phrase's side of that midline, in radiological orientation (patient's
        left on the image's right, as in the training images and in volumes segmented in
        display order, medsam3.models.orientation).
        Otherwise (one organ in view, X not found) the own mask is kept.
        """
        pair = lateral_pair(phrase)
        if pair is None or not mask.any():
            return mask
        side, base = pair
        _, logits = self.head.decode(state.feats, self._text([base]))
        both = self.dense_mask(state, logits[0], relative=relative)
        midline = bilateral_midline(both)
        if midline is None:
            return mask
        columns = np.arange(mask.shape[1])
        keep = columns > midline if side == "left" else columns < midline
        return (mask | both) & keep[None, :]

    def _refine_components(
        self, state: PlaneState, dense: torch.Tensor, phrase: str, relative: bool = True
    ) -> np.ndarray:
        """Dense mask -> decoder mask per large component where they agree (IoU >= iou_gate)."""
        mask = self.dense_mask(state, dense, relative=relative)
        if phrase in self.no_refine or resolve(phrase) in self.no_refine or not mask.any():
            return mask
        labels, n = ndimage.label(mask)
        if n == 0:
            return mask
        areas = ndimage.sum_labels(mask, labels, range(1, n + 1))
        order = np.argsort(-areas)[: self.max_refine]
        order = order[areas[order] >= self.refine_min_share * areas.max()]
        slices = ndimage.find_objects(labels)
        boxes = [_box(slices[i]) for i in order]
        decoded = self.decoder_masks(state, boxes=np.array(boxes, np.float32))
        out = mask.copy()
        for k, i in enumerate(order):
            comp = labels == i + 1
            dec = decoded[k]
            inter = np.logical_and(comp, dec).sum()
            iou = inter / max(1, np.logical_or(comp, dec).sum())
            if iou >= self.iou_gate:
                out[comp] = False
                out |= dec
        return out

    def instances(self, mask: np.ndarray, presence: float) -> tuple[np.ndarray, list[Instance]]:
        """Drop specks and split a 2D mask into instances (largest first, at most max_instances).

        Args:
            mask: (y, x) bool mask.
            presence: score given to every instance.

        Returns:
            The cleaned (y, x) bool mask and its Instances.
        """
        labels, n = ndimage.label(mask)
        if n == 0:
            return mask, []
        min_area = max(self.min_area, int(1e-4 * mask.size))
        areas = ndimage.sum_labels(mask, labels, range(1, n + 1))
        keep = np.flatnonzero(areas >= min_area)
        cleaned = np.isin(labels, keep + 1)
        slices = ndimage.find_objects(labels)
        out = []
        for i in keep[np.argsort(-areas[keep])][: self.max_instances]:
            sl = slices[i]
            full = np.zeros(mask.shape, bool)
            full[sl] = labels[sl] == i + 1
            out.append(Instance(full, tuple(int(v) for v in _box(sl)), float(presence)))
        return cleaned, out

    # --- public API ---------------------------------------------------------------------------
    def plane_rgb_groups(
        self, plane: np.ndarray, phrases: list[str], modality: str | None, intensity_range=None
    ) -> list[tuple[np.ndarray, list[str]]]:
        """Group phrases by intensity mapping (CT windows); one RGB plane per group.

        Returns:
            [((y, x, 3) uint8 plane, phrases)].
        """
        if (modality or "").lower() == "ct" and plane.dtype != np.uint8 and plane.ndim == 2:
            groups = group_by_ct_window(phrases, modality)
            return [(to_uint8_rgb(plane, "ct", ps[0]), ps) for ps in groups.values()]
        if plane.dtype == np.uint8:
            return [(to_uint8_rgb(plane), phrases)]
        return [(to_uint8_rgb(plane, modality, None, intensity_range), phrases)]

    def segment_plane(
        self,
        plane: np.ndarray,
        phrases: list[str],
        modality: str | None = None,
        boxes: dict | None = None,
        points: dict | None = None,
        intensity_range=None,
    ) -> dict[str, ConceptResult]:
        """Segment one 2D plane ((y, x) or (y, x, c)); see :meth:`segment` for the result."""
        results: dict[str, ConceptResult] = {}
        for rgb, group in self.plane_rgb_groups(plane, phrases, modality, intensity_range):
            state = self.encode_plane(rgb, modality)
            presence, dense = self.detect(state, group, mask_threshold=self.presence_threshold)
            for k, phrase in enumerate(group):
                results[phrase] = self._result(
                    state, phrase, float(presence[k]), dense[k], boxes, points
                )
        return {p: results[p] for p in phrases}

    def _result(self, state, phrase, presence, dense, boxes, points) -> ConceptResult:
        prompt_boxes = (boxes or {}).get(phrase)
        prompt_points = (points or {}).get(phrase)
        if prompt_boxes is not None and len(prompt_boxes):
            mask = self.decoder_union(state, np.asarray(prompt_boxes, np.float32).reshape(-1, 4))
            extra = {"prompt": "box"}
        elif prompt_points is not None and len(prompt_points):
            mask = self.decoder_masks(
                state, points=np.asarray(prompt_points, np.float32).reshape(-1, 2)
            )[0]
            extra = {"prompt": "point"}
        elif presence >= self.presence_threshold:
            mask, extra = self.refine(state, dense, phrase), {"prompt": "text"}
        else:
            mask, extra = np.zeros(state.prep.original, bool), {"prompt": "text"}
        mask, instances = self.instances(mask, presence)
        return ConceptResult(phrase, mask.astype(np.uint8), presence, instances, extra=extra)

    def segment(
        self,
        array: np.ndarray,
        concepts: list[str],
        modality: str | None = None,
        spacing: tuple[float, ...] | None = None,
        boxes: dict[str, list] | None = None,
        points: dict[str, list] | None = None,
        kind=None,
    ) -> dict[str, ConceptResult]:
        """See :meth:`medsam3.models.base.Segmenter.segment`.

        Volumes and videos are segmented slice by slice / frame by frame with propagation
        (:mod:`medsam3.models.propagate`); box/point prompts apply to 2D images.
        """
        given = check_concepts(concepts)
        names = {p: canonical(p) or p for p in given}
        phrases = list(dict.fromkeys(names.values()))
        boxes = {names.get(p, p): v for p, v in (boxes or {}).items()}
        points = {names.get(p, p): v for p, v in (points or {}).items()}
        kind = infer_kind(np.asarray(array), kind)
        data = check_array(array, kind)
        if kind == "image":
            if data.ndim == 3 and data.shape[-1] == 1:
                data = data[..., 0]
            with shared_encodings(self):  # recognising the modality encodes the same plane
                results = self._segment_image(data, phrases, modality, boxes, points)
        else:
            stride = slice_stride(spacing, self.key_spacing_mm)
            results = segment_compact_stack(self, data, phrases, kind, modality, stride=stride)
        return {p: _as_given(results[names[p]], p) for p in given}

    def _segment_image(self, image, phrases, modality, boxes, points) -> dict:
        """:meth:`segment` on a checked 2D image, by canonical phrase (upright step, tiles)."""
        order, guess = self.upright_order(image, modality, bool(boxes or points))
        view = to_display(image, order)
        results = self.segment_plane(view, phrases, modality, boxes, points)
        results = self._add_tiles(view, results, modality, set(boxes) | set(points))
        if guess is not None:
            results_to_stored(results, order, guess)
        return results

    def upright_order(self, image: np.ndarray, modality: str | None, prompted: bool):
        """(order to segment a 2D image in, the upright guess or None where not asked).

        Asked for CT, MRI and X-ray images (given, or recognised from the stored image) without
        box or point prompts (those are in the stored image's coordinates).
        """
        if self.upright is None or prompted:
            return DisplayOrder(), None
        if modality is None and self.modality_head is not None:
            modality = self.recognise_modality(image).modality  # its encoding is reused
        if (modality or "").lower() not in UPRIGHT_MODALITIES:
            return DisplayOrder(), None
        rgb = self.plane_rgb_groups(image, ["image"], modality)[0][0]
        return self.upright.order_to_apply(rgb)

    def _add_tiles(self, image, results, modality, prompted: set) -> dict[str, ConceptResult]:
        """Thin structures (vocabulary ``tiles`` n > 1) found on the whole image: OR in their
        masks from an n x n grid of overlapping tiles, each TILE_SIDE of the image's side, where
        vessels a pixel or two wide at the encoder's 256 px become wide enough to draw.
        """
        thin = [
            p
            for p, r in results.items()
            if tiles_of(p) > 1 and p not in prompted and r.presence >= self.presence_threshold
        ]
        for n in sorted({tiles_of(p) for p in thin}):
            group = [p for p in thin if tiles_of(p) == n]
            masks = {p: results[p].mask.astype(bool) for p in group}
            for sl in tile_grid(image.shape[:2], n, TILE_SIDE):
                for p, r in self.segment_plane(image[sl], group, modality).items():
                    masks[p][sl] |= r.mask.astype(bool)
            for p in group:
                mask, results[p].instances = self.instances(masks[p], results[p].presence)
                results[p].mask = mask.astype(np.uint8)
                results[p].extra["tiles"] = n * n
        return results


@contextmanager
def shared_encodings(model: CompactSegmenter) -> Iterator[None]:
    """Encode each distinct plane once during a block: :meth:`CompactSegmenter.encode_plane`
    reuses the encoding of pixels it has seen (keyed by a hash of the RGB bytes and shape).
    A nested block shares the outer block's encodings."""
    if model._encodings is not None:
        yield
        return
    model._encodings = {}
    try:
        yield
    finally:
        model._encodings = None


def _as_given(result: ConceptResult, phrase: str) -> ConceptResult:
    """A result under the phrase the user gave: synonyms and spelling corrections name the
    concept they were read as; phrases outside the vocabulary list their nearest concepts."""
    extra = dict(result.extra)
    if result.concept != phrase:
        extra["read_as"] = result.concept
    near = [] if resolve(result.concept) else [c for c, _ in nearest(phrase, k=3)]
    return replace(result, concept=phrase, nearest_known=near, extra=extra)


def tile_grid(shape: tuple[int, int], n: int, side: float) -> list[tuple[slice, slice]]:
    """An n x n grid of (y, x) tiles, each ``side`` of the image's height and width, spread
    evenly from edge to edge (overlapping when n * side > 1)."""
    h, w = (max(1, int(round(side * s))) for s in shape)
    ys = np.linspace(0, shape[0] - h, n).astype(int)
    xs = np.linspace(0, shape[1] - w, n).astype(int)
    return [(slice(y, y + h), slice(x, x + w)) for y in ys for x in xs]


def bilateral_midline(mask: np.ndarray, min_share: float = 0.1) -> float | None:
    """Column midway across a mask that holds one organ on each side, else None.

    The midline is the centre of the mask's column extent; it counts as bilateral when a
    connected component of at least ``min_share`` of the mask lies wholly on each side.
    """
    labels, n = ndimage.label(mask)
    if n < 2:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    midline = (cols[0] + cols[-1]) / 2
    areas = ndimage.sum_labels(mask, labels, range(1, n + 1))
    min_area = min_share * areas.sum()
    sides = set()
    for sl, area in zip(ndimage.find_objects(labels), areas, strict=True):
        if area >= min_area:
            if sl[1].stop - 1 < midline:
                sides.add("image left")
            elif sl[1].start > midline:
                sides.add("image right")
    return float(midline) if len(sides) == 2 else None


def _box(sl: tuple[slice, slice]) -> tuple[int, int, int, int]:
    """(y, x) slices -> (x0, y0, x1, y1), end exclusive."""
    return (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)


def build_compact(
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    precision: str = "float32",
    upright: bool | str | Path = True,
    **kw,
) -> CompactSegmenter:
    """Build the compact segmenter.

    Args:
        checkpoint: concept head .safetensors (None = the shipped head).
        device: "cpu", "cuda" or "cuda:N" (LiteMedSAM, the head and the modality classifier
            run there; MiniLM stays on the CPU, its phrase vectors are cached).
        precision: LiteMedSAM's compute precision, "float32" or "bfloat16" (autocast; see
            :class:`medsam3.models.litemedsam.LiteMedSAM`).
        upright: True: put CT, MRI and X-ray images the right way up with the packaged
            classifier (:mod:`medsam3.models.upright`); a path: that classifier; False: segment
            them as stored. Its weights are part of ``checkpoint_digest``.
        **kw: CompactSegmenter options (presence_threshold, iou_gate, max_refine, min_area).

    Returns:
        A ready CompactSegmenter.
    """
    _check_device(device)
    head, digest, info = load_head(checkpoint)
    kw.setdefault("no_refine", tuple(info.get("no_refine", ())))
    kw.setdefault("modality_head", info.get("modality_head"))
    kw.setdefault("calibration", info.get("presence_calibration"))
    kw.setdefault("mask_margin", info.get("mask_margin"))
    if "presence_threshold" in info:
        kw.setdefault("presence_threshold", float(info["presence_threshold"]))
    if upright:
        kw["upright"] = load_upright(None if upright is True else upright)
        digest = hashlib.sha256((digest + kw["upright"].digest).encode()).hexdigest()
    sam = LiteMedSAM(device=device, precision=precision)
    return CompactSegmenter(head, sam, digest, **kw)


def _check_device(device: str) -> None:
    """Refuse a device the compact backend cannot run on, before anything loads."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise InputError(f"the compact backend runs on cpu or cuda[:N], got device={device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device!r} asked for, but torch sees no CUDA GPU here")
