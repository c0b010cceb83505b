"""Registry of segmentation backends; nothing is downloaded, checkpoints are explicit paths."""

from __future__ import annotations

from collections.abc import Callable

from medsam3.models.base import Segmenter

# The backends are imported when one is built, not here: ``import medsam3`` (and so every
# ingest job, the Snakefile and ``medsam3 discover``) would otherwise import torch (7 s on the
# 2-core CI machine) and, for sam3, transformers.


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


DEVICES: dict[str, tuple[str, ...]] = {  # device kinds each backend runs on
    "compact": ("cpu", "cuda"),
    "sam3": ("cpu", "cuda"),
}


def resolve_device(backend: str, device: str | None = "auto") -> str:
    """The torch device to load a backend on.

    "auto" (or None) picks CUDA when torch sees a GPU and the backend runs on one, else the
    CPU. An explicit device is returned as given, and the backend refuses one it cannot use.
    """
    if device not in (None, "", "auto"):
        return device
    import torch  # see the note on backend imports above

    return "cuda" if "cuda" in DEVICES.get(backend, ()) and torch.cuda.is_available() else "cpu"


def uses_gpu(backend: str, device: str | None = "auto") -> bool:
    """Whether a job loading ``backend`` on ``device`` will run on a GPU when it gets one.

    Decided from the configuration alone (the login node that plans the jobs has no GPU):
    "cpu" never does; "cuda[:N]" and "auto" do when the backend runs on CUDA (``DEVICES``).
    """
    if device == "cpu" or backend not in DEVICES:
        return False
    return "cuda" in DEVICES[backend]


def precision_kwargs(backend: str, precision: str | None = "auto") -> dict:
    """``load_model`` options for a compute precision ("auto", "float32", "bfloat16").

    The compact backend takes ``precision`` (autocast around LiteMedSAM); sam3 takes ``dtype``
    (the weights are cast). "auto" (or None) passes nothing: compact runs float32 and sam3 keeps
    the checkpoint's stored dtype.
    """
    if precision in (None, "", "auto"):
        return {}
    return {"dtype": precision} if backend == "sam3" else {"precision": precision}


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
