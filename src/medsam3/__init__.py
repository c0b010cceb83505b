"""medsam3: text-promptable medical concept segmentation over imaging cohorts."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(backend: str = "compact", checkpoint: str | None = None, **kwargs):
    """Build a concept segmenter (see :func:`medsam3.models.build.load_model`)."""
    from medsam3.models.build import load_model as _load_model

    return _load_model(backend=backend, checkpoint=checkpoint, **kwargs)
