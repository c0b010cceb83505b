"""The head file: concept-head weights (safetensors) and the sibling JSON describing them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors.torch import save_file

from medsam3.io.atomic import atomic_path
from medsam3.models.concept_head import ConceptHead
from medsam3.models.concepts import load_vocabulary


def save_head(head: ConceptHead, path: Path, extra: dict, more: dict | None = None) -> Path:
    """Write head weights (safetensors) and a sibling JSON with config, concepts and sha256.

    Args:
        head: the trained head.
        path: target .safetensors path.
        extra: metrics / training facts stored in the JSON.
        more: further tensors stored in the same file (e.g. ``modality.*`` weights).

    Returns:
        The safetensors path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().float() for k, v in head.state_dict().items()}
    state |= {k: v.detach().cpu().contiguous().float() for k, v in (more or {}).items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "medsam3-compact-head-v2"})
    tmp.chmod(0o644)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        "config": head.cfg.to_dict(),
        "concepts": [c.concept for c in load_vocabulary()],
        "sha256": digest,
        **extra,
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return path


def update_head_info(path: Path, facts: dict) -> Path:
    """Replace ``facts``' keys in a head's sibling JSON (atomically; the weights are untouched).

    Returns:
        The JSON path.
    """
    info_path = Path(path).with_suffix(".json")
    info = json.loads(info_path.read_text(encoding="utf-8")) | facts
    with atomic_path(info_path) as tmp:
        tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info_path
