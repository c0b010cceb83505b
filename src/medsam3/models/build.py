"""Registry of segmentation backends; nothing is downloaded, checkpoints are explicit paths."""

from __future__ import annotations

from collections.abc import Callable

from medsam3.models.base import Segmenter


def _build_compact(checkpoint: str | None = None, **kwargs) -> Segmenter:
    from medsam3.models.compact import build_compact

    return build_compact(checkpoint=checkpoint, **kwargs)


def _build_sam3(checkpoint: str | None = None, **kwargs) -> Segmenter:
    from medsam3.models.sam3 import build_sam3

    return build_sam3(checkpoint=checkpoint, **kwargs)


BACKENDS: dict[str, Callable[..., Segmenter]] = {
    "compact": _build_compact,
    "sam3": _build_sam3,
}


def load_model(backend: str = "compact", checkpoint: str | None = None, **kwargs) -> Segmenter:
    """Build a segmenter.

    Args:
        backend: "compact" (LiteMedSAM + MiniLM + trained concept head, the default) or "sam3"
            (a local SAM 3 / MedSAM3 checkpoint directory, transformers).
        checkpoint: backend checkpoint path; None uses the compact head shipped with medsam3.
        **kwargs: backend options (device, lora adapter path, ...).

    Returns:
        A Segmenter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend](checkpoint=checkpoint, **kwargs)
