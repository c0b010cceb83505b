"""The medsam3 cache folder and the LiteMedSAM feature cache kept in it.

One encoded plane is stored as ``$MEDSAM3_CACHE/features/<sha256 of the RGB plane>.safetensors``
with its (256, 64, 64) float16 embedding, its padded 256x256 uint8 input frame and its geometry.
Training and evaluation read it so that a plane is encoded once however often it is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medsam3.io.atomic import atomic_path
from medsam3.models.litemedsam import LiteMedSAM, Prepared


def cache_dir() -> Path:
    """The medsam3 cache folder: ``$MEDSAM3_CACHE`` or ``~/.cache/medsam3``."""
    return Path(os.environ.get("MEDSAM3_CACHE", Path.home() / ".cache" / "medsam3")).expanduser()


def feature_path(digest: str) -> Path:
    """Cache file of one encoded plane."""
    return cache_dir() / "features" / f"{digest}.safetensors"


def encode_cached(sam: LiteMedSAM, prep: Prepared) -> dict[str, torch.Tensor]:
    """Encode one prepared plane, reading/writing the feature cache.

    Args:
        sam: LiteMedSAM wrapper.
        prep: the plane as ``prepare_image`` returns it (its digest keys the cache).

    Returns:
        {"embedding": (256, 64, 64) float16, "frame": (3, 256, 256) uint8,
        "geometry": int64 [orig_h, orig_w, resized_h, resized_w]}.
    """
    path = feature_path(prep.digest)
    if path.is_file():
        return load_file(path)
    emb = sam.encode(prep)[0].to(torch.float16).cpu()
    frame = (prep.tensor[0] * 255).round().to(torch.uint8)
    geom = torch.tensor([*prep.original, *prep.resized], dtype=torch.int64)
    entry = {"embedding": emb.contiguous(), "frame": frame.contiguous(), "geometry": geom}
    with atomic_path(path) as tmp:
        save_file(entry, str(tmp))
    return entry
