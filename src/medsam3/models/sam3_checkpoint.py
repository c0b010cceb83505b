"""Checkpoint handling for the sam3 backend: validation, safe loading, random and tiny configs.

Only local directories are read (``local_files_only=True``), weights only as safetensors, never
remote code (no ``trust_remote_code``) and never a pickle: a directory that holds only
``pytorch_model.bin`` / ``*.pt`` is refused before transformers sees it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from medsam3.models.clip_tokenizer import offline_clip_tokenizer

log = logging.getLogger(__name__)
# transformers' Sam3 classes (2.4 s to import) and peft are imported by the functions that
# build models, so that validating a checkpoint folder stays quick.

MODEL_TYPES = ("sam3", "sam3_video")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
EXPECTED_FILES = (
    "config.json (model_type 'sam3' or 'sam3_video'); model.safetensors, or "
    "model-0000X-of-0000N.safetensors shards + model.safetensors.index.json; optionally "
    "tokenizer.json or vocab.json + merges.txt (else medsam3's offline CLIP tokenizer is used) and "
    "processor_config.json / preprocessor_config.json (else SAM 3's default normalisation)"
)


class CheckpointError(ValueError):
    """A checkpoint or adapter directory that cannot be used; the message says how to fix it."""


def _pickles(folder: Path) -> list[str]:
    """Names of pickle-format weight files in folder (never opened)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files of a checkpoint folder (single file or index + shards).

    Args:
        folder: checkpoint directory.

    Returns:
        Existing ``.safetensors`` paths; raises CheckpointError when none / a shard is missing.
    """
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards listed in {index.name} are missing: {missing}")
        return [folder / n for n in names]
    pickles = _pickles(folder)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights {pickles}; the sam3 backend never unpickles "
            "files. Convert them to safetensors on a trusted machine (load with torch.load("
            "weights_only=True), then model.save_pretrained(dir, safe_serialization=True))."
        )
    raise CheckpointError(f"{folder} has no model.safetensors; expected {EXPECTED_FILES}")


def check_checkpoint_dir(checkpoint: str | Path | None) -> tuple[Path, dict]:
    """Validate a local SAM 3 / MedSAM3 checkpoint directory without loading weights.

    Args:
        checkpoint: directory path; None is refused with a message naming the expected files.

    Returns:
        (folder, config dict parsed from config.json).
    """
    if checkpoint is None:
        raise CheckpointError(
            "the sam3 backend needs a local checkpoint directory (nothing is downloaded); pass "
            f"checkpoint=/path/to/sam3 holding {EXPECTED_FILES}"
        )
    folder = Path(checkpoint).expanduser()
    if not folder.exists():
        raise CheckpointError(f"sam3 checkpoint directory {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(
            f"sam3 checkpoint {folder} is a file; pass the directory holding {EXPECTED_FILES}"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json; expected {EXPECTED_FILES}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    if config.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(
            f"{config_path} has model_type {config.get('model_type')!r}; the sam3 backend loads "
            f"{MODEL_TYPES} checkpoints (Sam3Model / Sam3VideoModel)"
        )
    weight_files(folder)
    return folder, config


def check_lora_dir(lora: str | Path) -> Path:
    """Validate a peft LoRA adapter directory (safetensors only).

    Args:
        lora: directory with adapter_config.json and adapter_model.safetensors.

    Returns:
        The directory as a Path.
    """
    folder = Path(lora).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"LoRA {folder} does not exist; pass a peft adapter directory or a MedSAM3 LoRA file"
        )
    if not (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder} has no adapter_config.json (save it with peft)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise CheckpointError(
            f"{folder} has no adapter_model.safetensors (found pickles: {_pickles(folder)}); "
            "re-save the adapter with model.save_pretrained(dir, safe_serialization=True)"
        )
    return folder


def fingerprint(paths: list[Path], chunk: int = 1 << 20) -> str:
    """A cheap content fingerprint (sha256) of checkpoint files.

    Hashes each file's name, size, safetensors header (tensor names, shapes, dtypes, offsets)
    or whole content for small files, and its first and last MiB. Not a full-content hash.

    Args:
        paths: files to fingerprint (order matters).
        chunk: bytes read from each end of large files.

    Returns:
        "sha256:<hex>".
    """
    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            if size <= 4 * chunk:
                digest.update(f.read())
                continue
            if path.suffix == ".safetensors":
                header_len = int.from_bytes(f.read(8), "little")
                digest.update(f.read(min(header_len, 64 * chunk)))
            f.seek(0)
            digest.update(f.read(chunk))
            f.seek(size - chunk)
            digest.update(f.read(chunk))
    return "sha256:" + digest.hexdigest()


def load_processor(folder: Path | None, image_size: int):
    """Sam3Processor from a checkpoint folder, with medsam3's offline CLIP tokenizer as fallback.

    Args:
        folder: checkpoint directory (None: defaults only).
        image_size: model input size; the image processor always resizes to it.

    Returns:
        transformers ``Sam3Processor``.
    """
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Processor

    has = (lambda *names: all((folder / n).is_file() for n in names)) if folder else None
    if folder and (has("processor_config.json") or has("preprocessor_config.json")):
        image_processor = Sam3ImageProcessor.from_pretrained(folder, local_files_only=True)
    else:
        image_processor = Sam3ImageProcessor()
    image_processor.size = {"height": image_size, "width": image_size}
    if folder and (has("tokenizer.json") or has("vocab.json", "merges.txt")):
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = offline_clip_tokenizer()
    return Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_video_config(image_size: int = 112, queries: int = 16, max_objects: int = 4):
    """A small Sam3VideoConfig (~8M parameters, CLIP vocabulary, 112 px) for tests and benchmarks.

    Hidden size 128 (the tracker's memory attention needs > 64), 2 ViT layers, 1 DETR layer.

    Args:
        image_size: input size in pixels (multiple of the 14-pixel patch).
        queries: DETR object queries.
        max_objects: cap on tracked objects per video session.

    Returns:
        transformers ``Sam3VideoConfig``.
    """
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig
    from transformers.models.sam3 import configuration_sam3 as c

    h, n, small = 128, image_size // 14, dict(num_attention_heads=4, intermediate_size=128)
    backbone = c.Sam3ViTConfig(
        hidden_size=64, num_hidden_layers=2, image_size=image_size, window_size=8,
        global_attn_indexes=[1], pretrain_image_size=image_size, **small,
    )  # fmt: skip
    vision = c.Sam3VisionConfig(
        backbone_config=backbone, fpn_hidden_size=h,
        backbone_feature_sizes=[[4 * n, 4 * n], [2 * n, 2 * n], [n, n]],
    )  # fmt: skip
    text = dict(vocab_size=49408, hidden_size=64, projection_dim=64, num_hidden_layers=2,
                max_position_embeddings=32, **small)  # fmt: skip
    detector = Sam3Config(
        vision_config=vision, text_config=text,
        geometry_encoder_config=c.Sam3GeometryEncoderConfig(hidden_size=h, num_layers=1, **small),
        detr_encoder_config=c.Sam3DETREncoderConfig(hidden_size=h, num_layers=1, **small),
        detr_decoder_config=c.Sam3DETRDecoderConfig(
            hidden_size=h, num_layers=1, num_queries=queries, **small
        ),
        mask_decoder_config=c.Sam3MaskDecoderConfig(hidden_size=h, num_attention_heads=4),
    )  # fmt: skip
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision.to_dict(), image_size=image_size, num_maskmem=3,
        prompt_encoder_config=dict(hidden_size=h, image_size=image_size),
        mask_decoder_config=dict(hidden_size=h, mlp_dim=128, num_attention_heads=4,
                                 iou_head_hidden_dim=h),
        memory_attention_hidden_size=h, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=128, memory_encoder_hidden_size=h,
        mask_downsampler_embed_dim=h, memory_fuser_embed_dim=h, memory_fuser_intermediate_dim=128,
        memory_fuser_num_layers=1,
    )  # fmt: skip
    return Sam3VideoConfig(
        detector_config=detector.to_dict(), tracker_config=tracker.to_dict(),
        low_res_mask_size=4 * n, max_num_objects=max_objects, hotstart_delay=0,
    )  # fmt: skip


def random_video_model(scale: str = "tiny", seed: int = 0):
    """A randomly initialised Sam3VideoModel (detector + tracker); nothing is downloaded.

    Args:
        scale: "tiny" (:func:`tiny_video_config`) or "full" (default Sam3VideoConfig, 1008 px).
        seed: torch seed for the initialisation.

    Returns:
        transformers ``Sam3VideoModel`` in eval mode.
    """
    from transformers import Sam3VideoConfig, Sam3VideoModel

    if scale not in ("tiny", "full"):
        raise ValueError(f"scale must be 'tiny' or 'full', got {scale!r}")
    config = tiny_video_config() if scale == "tiny" else Sam3VideoConfig()
    torch.manual_seed(seed)
    return Sam3VideoModel(config).eval()


def load_sam3_modules(folder: Path, config: dict, dtype=None, load_tracker: bool = True):
    """Load Sam3Model, or Sam3VideoModel for 'sam3_video' checkpoints, from safetensors only.

    Args:
        folder: validated checkpoint directory.
        config: its parsed config.json.
        dtype: torch dtype (or its name) for the weights; None keeps the stored dtype.
        load_tracker: False loads only the detector of a sam3_video checkpoint.

    Returns:
        (detector Sam3Model, Sam3VideoModel or None), both in eval mode.
    """
    from transformers import Sam3Model, Sam3VideoModel

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    kwargs = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if config["model_type"] == "sam3_video" and load_tracker:
        video = Sam3VideoModel.from_pretrained(folder, **kwargs).eval()
        return video.detector_model, video
    return Sam3Model.from_pretrained(folder, **kwargs).eval(), None


def apply_lora(detector, video, lora: Path, merge: bool = True):
    """Apply a peft LoRA adapter (safetensors) to the detector, or to the whole video model.

    Adapters whose keys start with ``base_model.model.detector_model.`` were trained on a
    Sam3VideoModel and go onto it; all others onto the Sam3Model detector (what MedSAM3-style
    fine-tunes adapt).

    Args:
        detector: Sam3Model.
        video: Sam3VideoModel holding ``detector`` (or None).
        lora: validated adapter directory.
        merge: merge the adapter into the weights (no inference overhead).

    Returns:
        (detector, video) with the adapter applied.
    """
    from peft import PeftModel
    from safetensors import safe_open

    with safe_open(str(lora / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    on_video = any(".detector_model." in k for k in keys)
    if on_video and video is None:
        raise CheckpointError(
            f"{lora}: adapter targets a Sam3VideoModel but only a detector is loaded"
        )
    target = video if on_video else detector
    peft_model = PeftModel.from_pretrained(target, str(lora), is_trainable=False)
    adapted = peft_model.merge_and_unload() if merge else peft_model
    if target is video:
        return adapted.detector_model, adapted
    if video is not None:
        video.detector_model = adapted
    return adapted, video
