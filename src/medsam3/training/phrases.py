"""Phrase vectors for training: the vectors inference uses, plus raw wordings for robustness."""

from __future__ import annotations

import random

import torch

from medsam3.models.concepts import load_vocabulary
from medsam3.models.phrases import condition
from medsam3.models.text_encoder import shared_text_encoder


class PhraseTable:
    """Cached head-conditioning vectors of concepts.

    Args:
        raw_share: share of draws that use the raw MiniLM embedding of the concept's name or a
            random synonym instead of the conditioning vector inference uses (canonical name,
            mixed with the parent's). Inference maps every listed wording to its concept, but a
            user's own wording is embedded as it is; raw draws teach the head the neighbourhood
            of each concept in embedding space.
    """

    def __init__(self, raw_share: float = 0.0) -> None:
        self.raw_share = raw_share
        self.wordings = {c.concept: [c.concept, *c.synonyms] for c in load_vocabulary()}
        self._conditioned: dict[str, torch.Tensor] = {}
        self._raw: dict[str, torch.Tensor] = {}

    def vector(self, concept: str) -> torch.Tensor:
        """The (384,) vector inference uses for a concept."""
        if concept not in self._conditioned:
            self._conditioned[concept] = torch.from_numpy(condition([concept])[0])
        return self._conditioned[concept]

    def training_vector(self, concept: str, rng: random.Random) -> torch.Tensor:
        """The inference vector, or (``raw_share`` of the draws) a raw wording's embedding."""
        if rng.random() >= self.raw_share:
            return self.vector(concept)
        wording = rng.choice(self.wordings.get(concept, [concept]))
        if wording not in self._raw:
            self._raw[wording] = torch.from_numpy(shared_text_encoder().encode([wording])[0])
        return self._raw[wording]
