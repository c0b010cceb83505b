"""Which modality an image shows, read off the LiteMedSAM embedding it is segmented with.

A small classifier over pooled embedding statistics and the colour statistics of the input
frame (colour separates dermoscopy from endoscopy better than texture). It is trained with the
concept head (:mod:`medsam3.training.fit_heads`) and stored in the same safetensors file under
``modality.*``; its class names are in the head's JSON. The pipeline uses it where a cohort
gives no modality, and the compact backend uses it to pick the presence calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FEATURES = 2 * 256 + 7


@dataclass(frozen=True)
class ModalityGuess:
    """A recognised modality and the classifier's probability for it."""

    modality: str
    confidence: float


def modality_features(
    embedding: torch.Tensor, frame: torch.Tensor, resized: list[tuple[int, int]]
) -> torch.Tensor:
    """Pooled statistics of the image part of LiteMedSAM inputs (padding left out).

    Args:
        embedding: (B, 256, 64, 64) embeddings.
        frame: (B, 3, 256, 256) padded input frames in [0, 1].
        resized: (h, w) of each image inside its 256 frame.

    Returns:
        (B, FEATURES) float32: embedding mean and std per channel, frame mean and std per colour
        channel, and the mean absolute difference between colour channels (0 for grey).
    """
    rows = []
    for b, (h, w) in enumerate(resized):
        emb = embedding[b, :, : max(1, h // 4), : max(1, w // 4)].float().flatten(1)
        img = frame[b, :, :h, :w].float().flatten(1)
        spread = (img[0] - img[1]).abs().mean() + (img[1] - img[2]).abs().mean()
        rows.append(torch.cat([emb.mean(1), emb.std(1), img.mean(1), img.std(1), spread[None]]))
    return torch.stack(rows)


class ModalityHead(nn.Module):
    """MLP over :func:`modality_features`; ``classes`` names its outputs."""

    def __init__(self, classes: list[str], hidden: int = 128) -> None:
        super().__init__()
        self.classes = list(classes)
        self.norm = nn.LayerNorm(FEATURES)
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, len(classes))
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, FEATURES) -> (B, classes) logits."""
        return self.net(self.norm(features))

    @torch.inference_mode()
    def guess(self, features: torch.Tensor) -> list[ModalityGuess]:
        """Most probable modality per row of ``features``."""
        prob = torch.softmax(self.forward(features), dim=-1)
        conf, idx = prob.max(dim=-1)
        return [
            ModalityGuess(self.classes[i], round(float(c), 4))
            for i, c in zip(idx.tolist(), conf, strict=True)
        ]
