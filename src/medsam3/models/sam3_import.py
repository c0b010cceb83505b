"""MedSAM3 LoRA files and native SAM 3 checkpoints, brought into the sam3 backend.

MedSAM3 (Joey-S-Liu/MedSAM3) released its fine-tune as ``best_lora_weights.pt``: a
``torch.save`` of LoRA pairs on the native SAM 3 image model's module names,
``<module>.lora.lora_A`` of shape (in, r) and ``<module>.lora.lora_B`` of shape (r, out), with
each adapted linear layer computing ``y = x W^T + b + (alpha / r) x A B``. Folding that into
the weight gives ``W' = W + (alpha / r) (A B)^T``. The file stores neither alpha nor the
module list: alpha is 32 in MedSAM3's released configuration (rank 16), and the rank is read
from the tensors. Their ``nn.MultiheadAttention`` layers were replaced by separate ``q_proj``,
``k_proj``, ``v_proj`` layers before training, so those LoRA pairs adapt one third of the
native ``in_proj_weight``; a pair on the ViT's fused ``qkv`` (or on a fused ``in_proj``) adapts
all three, its B split into thirds. peft-layout pairs (``lora_A.weight`` (r, in),
``lora_B.weight`` (out, r)) on native names are read too.

Files are read with safetensors, or with ``torch.load(weights_only=True)``, which refuses any
pickle that would run code.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medsam3.io.atomic import temporary_name
from medsam3.models.sam3_checkpoint import (
    CheckpointError,
    check_checkpoint_dir,
    fingerprint,
    load_processor,
    load_sam3_modules,
)
from medsam3.models.sam3_native import (
    UNUSED,
    detector_state,
    fused_names,
    hf_key,
    native_to_hf,
    split_fused,
)

log = logging.getLogger(__name__)
MEDSAM3_ALPHA = 32.0  # lora.alpha of MedSAM3's released configuration (rank 16)
_NATIVE_SUFFIXES = (".lora.lora_A", ".lora.lora_B")
_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
_MHA_PARTS = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class LoraUpdate:
    """One low-rank update of a transformers weight: ``delta = scale * up @ down``.

    Attributes:
        key: the Sam3Model weight it adapts, e.g. ``detr_decoder.layers.0.mlp.fc1.weight``.
        down: (r, in) float32 (peft's lora_A).
        up: (out, r) float32 (peft's lora_B).
        scale: alpha / r.
    """

    key: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def module(self) -> str:
        """The adapted linear layer's name (the key without ``.weight``)."""
        return self.key.removesuffix(".weight")

    def delta(self) -> torch.Tensor:
        """The (out, in) float32 weight update."""
        return self.scale * (self.up @ self.down)


def read_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pt`` read with ``weights_only=True``.

    Args:
        path: the file. A ``{"model": {...}}`` or ``{"state_dict": {...}}`` wrapper is opened.

    Returns:
        Mapping name -> CPU tensor.

    Raises:
        CheckpointError: missing file, a pickle that needs code to load, or no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is not a plain tensor file: torch.load(weights_only=True) refused it "
            f"({str(exc).splitlines()[0][:200]}). medsam3 never runs code from a pickle; on a "
            "trusted machine re-save its tensors with safetensors.torch.save_file."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    tensors = (
        {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if isinstance(data, dict)
        else {}
    )
    if not tensors:
        raise CheckpointError(f"{path} holds no named tensors (found {type(data).__name__})")
    return tensors


def lora_pairs(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group a LoRA file's tensors into (down (r, in), up (out, r)) per native module.

    Args:
        tensors: a MedSAM3 file (``<m>.lora.lora_A`` (in, r), ``<m>.lora.lora_B`` (r, out)) or
            peft-layout pairs on native names (``<m>.lora_A[.default].weight`` (r, in), ...).

    Returns:
        Mapping native module name -> (down, up) as float32, in peft's orientation.

    Raises:
        CheckpointError: a half pair, ranks that disagree, or no LoRA tensors at all.
    """
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("base_model.model.").replace(".default.weight", ".weight")
        for suffixes, transpose in ((_NATIVE_SUFFIXES, True), (_PEFT_SUFFIXES, False)):
            for half, suffix in zip("AB", suffixes, strict=True):
                if name.endswith(suffix):
                    t = tensor.detach().float()
                    halves.setdefault(name[: -len(suffix)], {})[half] = t.T if transpose else t
    if not halves:
        raise CheckpointError(
            "no LoRA tensors found: expected <module>.lora.lora_A / .lora.lora_B (MedSAM3) or "
            f"<module>.lora_A.weight / .lora_B.weight; first keys: {list(tensors)[:3]}"
        )
    pairs = {}
    for module, half in sorted(halves.items()):
        if set(half) != {"A", "B"}:
            raise CheckpointError(f"LoRA module {module} has lora_{set(half).pop()} only")
        down, up = half["A"], half["B"]
        if down.shape[0] != up.shape[1]:
            raise CheckpointError(
                f"LoRA module {module}: lora_A rank {down.shape[0]} != lora_B rank {up.shape[1]}"
            )
        pairs[module] = (down, up)
    return pairs


def _weight_targets(module: str) -> tuple[str, int | None]:
    """(transformers key of the native weight a LoRA module adapts, third of it or None)."""
    parent, _, leaf = module.rpartition(".")
    if leaf in _MHA_PARTS:  # MedSAM3 split nn.MultiheadAttention into q/k/v layers
        return hf_key(f"{parent}.in_proj_weight"), _MHA_PARTS.index(leaf)
    if leaf == "in_proj":
        return hf_key(f"{parent}.in_proj_weight"), None
    return hf_key(f"{module}.weight"), None


def lora_updates(
    tensors: dict[str, torch.Tensor], alpha: float = MEDSAM3_ALPHA
) -> list[LoraUpdate]:
    """The LoRA pairs of a file as updates of transformers Sam3Model weights.

    Args:
        tensors: a LoRA file's tensors (:func:`read_tensor_file`).
        alpha: LoRA alpha; each pair is scaled by alpha / r (r: its rank).

    Returns:
        One update per adapted Sam3Model weight; a fused qkv / in_proj pair gives three (the
        same down matrix, the up matrix split into thirds). Pairs on the point-prompt
        projections, which transformers' detector lacks, are skipped.
    """
    updates, unused = [], []
    for module, (down, up) in lora_pairs(tensors).items():
        key, third = _weight_targets(module)
        if UNUSED.match(key):
            unused.append(module)
            continue
        scale = float(alpha) / down.shape[0]
        parts = [(fused_names(key)[third], up)] if third is not None else split_fused(key, up)
        updates += [LoraUpdate(name, down, part.contiguous(), scale) for name, part in parts]
    if unused:
        log.info("LoRA pairs on weights transformers' SAM 3 does not use, skipped: %s", unused)
    return updates


def fold_lora(model: torch.nn.Module, updates: list[LoraUpdate]) -> int:
    """Add each update to its weight in place: ``W += scale * up @ down``.

    Args:
        model: a transformers Sam3Model (a Sam3VideoModel's ``detector_model``).
        updates: from :func:`lora_updates`.

    Returns:
        The number of weights changed.

    Raises:
        CheckpointError: an update names a weight the model lacks, or its shape differs (the
            LoRA was trained on another SAM 3 size or version).
    """
    params = dict(model.named_parameters())
    problems = [u.key for u in updates if u.key not in params]
    problems += [
        f"{u.key} {tuple(params[u.key].shape)} vs LoRA {(u.up.shape[0], u.down.shape[1])}"
        for u in updates
        if u.key in params and params[u.key].shape != (u.up.shape[0], u.down.shape[1])
    ]
    if problems:
        raise CheckpointError(
            f"{len(problems)} LoRA update(s) do not fit this SAM 3 checkpoint (another model "
            f"size or version?): {problems[:3]}"
        )
    with torch.no_grad():
        for u in updates:
            weight = params[u.key]
            delta = u.delta().to(weight.device)
            weight.copy_((weight.float() + delta).to(weight.dtype))
    return len(updates)


def save_peft_adapter(model: torch.nn.Module, updates: list[LoraUpdate], folder: Path) -> Path:
    """Write the updates as a peft LoRA adapter on the model's module names (not folded).

    Args:
        model: the Sam3Model the adapter is for (left unchanged).
        updates: from :func:`lora_updates`; all of one rank and scale.
        folder: output directory (adapter_config.json + adapter_model.safetensors).

    Returns:
        The folder, loadable with ``build_sam3(..., lora=folder)``.
    """
    from peft import LoraConfig, get_peft_model

    ranks = {(u.down.shape[0], u.scale) for u in updates}
    if len(ranks) != 1:
        raise CheckpointError(f"a peft adapter needs one rank and alpha; the file has {ranks}")
    ((rank, scale),) = ranks
    modules = sorted({u.module for u in updates})
    config = LoraConfig(r=rank, lora_alpha=scale * rank, target_modules=modules, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    try:
        layers = dict(peft_model.base_model.model.named_modules())
        with torch.no_grad():
            for u in updates:
                layer = layers[u.module]
                layer.lora_A["default"].weight.copy_(u.down)
                layer.lora_B["default"].weight.copy_(u.up)
        peft_model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        peft_model.unload()  # restore the plain linear layers
    return folder


def load_native_detector(path: str | Path, config: str | Path | None = None):
    """A transformers Sam3Model holding the detector weights of a native SAM 3 checkpoint.

    Args:
        path: ``sam3.pt`` (read with weights_only=True) or a ``.safetensors`` of native keys.
        config: a transformers config.json for a non-default SAM 3 size (model_type "sam3",
            or "sam3_video", whose detector part is used); None: the default (full) SAM 3.

    Returns:
        (Sam3Model in eval mode, info dict: tracker_weights_skipped, unused_keys).

    Raises:
        CheckpointError: the checkpoint lacks weights the model needs.
    """
    from transformers import Sam3Config, Sam3Model, Sam3VideoConfig

    native, skipped = detector_state(read_tensor_file(path))
    cfg = Sam3Config()
    if config is not None:
        data = json.loads(Path(config).read_text(encoding="utf-8"))
        video = data.get("model_type") == "sam3_video"
        video_cfg = Sam3VideoConfig.from_dict(data) if video else None
        cfg = video_cfg.detector_config if video else Sam3Config.from_dict(data)
    model = Sam3Model(cfg).eval()
    missing, unused = model.load_state_dict(native_to_hf(native), strict=False)
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} detector weight(s) missing after conversion (not a SAM 3 "
            f"image-model checkpoint, or another size: pass --config), e.g. {missing[:3]}"
        )
    if unused:  # e.g. the point-prompt projections, which transformers' detector has no use for
        log.info("%s: %d native weight(s) not used by Sam3Model: %s", path, len(unused), unused[:6])
    return model, {"tracker_weights_skipped": skipped, "unused_keys": sorted(unused)}


def import_weights(
    out: str | Path,
    checkpoint: str | Path | None = None,
    native: str | Path | None = None,
    lora: str | Path | None = None,
    alpha: float = MEDSAM3_ALPHA,
    peft: bool = False,
    config: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a checkpoint folder the sam3 backend loads, from SAM 3 weights and a MedSAM3 LoRA.

    Args:
        out: the folder to write (replaced atomically when it exists).
        checkpoint: a transformers SAM 3 folder (e.g. facebook/sam3); or
        native: a native SAM 3 checkpoint (``sam3.pt``); only its detector is converted.
        lora: a MedSAM3 LoRA file (``best_lora_weights.pt``) to fold into the weights.
        alpha: the LoRA's alpha (scale alpha / r).
        peft: write the LoRA as a peft adapter in ``out/adapter`` instead of folding it.
        config: transformers config.json for a native checkpoint of a non-default size.
        dtype: store the weights in this dtype ("bfloat16", ...); None keeps the source's.

    Returns:
        ``out``: config.json, model.safetensors, processor files and ``medsam3_import.json``
        (what was imported, for provenance).
    """
    if (checkpoint is None) == (native is None):
        raise CheckpointError("give one base model: a transformers SAM 3 folder or a sam3.pt")
    info: dict = {"alpha": alpha if lora else None, "lora_folded": bool(lora) and not peft}
    if checkpoint is not None:
        folder, cfg = check_checkpoint_dir(checkpoint)
        detector, video = load_sam3_modules(folder, cfg)
        info["base"] = {"checkpoint": folder.name, "model_type": cfg["model_type"]}
    else:
        folder, video = None, None
        detector, extra = load_native_detector(native, config)
        info["base"] = {"native": Path(native).name, "digest": fingerprint([Path(native)]), **extra}
    final = Path(out).expanduser()
    tmp = temporary_name(final, "tmp", keep_suffix=False)
    tmp.mkdir(parents=True)
    try:
        if lora is not None:
            updates = lora_updates(read_tensor_file(lora), alpha)
            info["lora"] = {"file": Path(lora).name, "digest": fingerprint([Path(lora)])}
            info["lora"].update(rank=int(updates[0].down.shape[0]), weights=len(updates))
            if peft:
                save_peft_adapter(detector, updates, tmp / "adapter")
            else:
                fold_lora(detector, updates)
        model = video if video is not None else detector
        if dtype:
            model.to(getattr(torch, dtype))
        model.save_pretrained(str(tmp), safe_serialization=True)
        load_processor(folder, int(detector.config.image_size)).save_pretrained(str(tmp))
        (tmp / "medsam3_import.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
