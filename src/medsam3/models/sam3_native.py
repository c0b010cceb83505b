"""SAM 3's native weight names (facebookresearch/sam3, MedSAM3) in transformers' layout.

A native SAM 3 image model names its weights after its own modules
(``backbone.vision_backbone.trunk.blocks.3.attn.qkv.weight``); transformers' ``Sam3Model``
names them after its own (``vision_encoder.backbone.layers.3.attention.q_proj.weight``). This
module renames the first into the second the way transformers' ``convert_sam3_to_hf.py`` does:

- every key is renamed by :data:`RENAMES`, a list of anchored patterns applied in order;
- fused attention projections are split into thirds along the output axis: the ViT's
  ``qkv`` and every ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias`` become
  ``q_proj``, ``k_proj`` and ``v_proj``;
- the ViT's position table loses its class-token row (577 -> 576 positions at 1008 px);
- the CLIP text projection, stored (in, out) natively, is transposed to (out, in);
- the ViT blocks' rotary tables (``freqs_cis``) are dropped: transformers recomputes them.

Only the detector (the image model) is converted; a native checkpoint's tracker weights
(``tracker.*``) are not (see :func:`detector_state`).
"""

from __future__ import annotations

import math
import re

import torch

DETECTOR_PREFIX = "detector."
TRACKER_PREFIX = "tracker."
POSITION_KEY = "vision_encoder.backbone.embeddings.position_embeddings"
TEXT_PROJECTION_KEY = "text_encoder.text_projection.weight"
FUSED = ("qkv", "in_proj")  # fused q/k/v projections (ViT; nn.MultiheadAttention)

_VIT = r"backbone\.vision_backbone\.trunk\."
_TEXT = r"backbone\.language_backbone\.encoder\."
_TEXT_BLOCK = _TEXT + r"transformer\.resblocks\.(\d+)\."
_DEC = r"transformer\.decoder\."
_DL = r"transformer\.decoder\.layers\.(\d+)\."
_ENC = r"transformer\.encoder\.layers\.(\d+)\."
_GEO = r"geometry_encoder\.encode\.(\d+)\."
_SEG = r"segmentation_head\."
_FPN = r"backbone\.vision_backbone\.convs\.(\d+)\."
_VL = r"vision_encoder.backbone.layers.\1."
_NL = r"vision_encoder.neck.fpn_layers.\1."
_TL = r"text_encoder.text_model.encoder.layers.\1."
_PATCH = "vision_encoder.backbone.embeddings.patch_embeddings.projection."


def _shifted(prefix: str) -> str:
    """Replacement for ``...layers.<i>.`` MLP heads that transformers numbers from 1."""
    return prefix + "layer{}."


# (native pattern, transformers replacement): anchored at the start of the key, applied in
# order, first match wins. A replacement with "{}" takes the native layer index plus one.
RENAMES: tuple[tuple[str, str], ...] = (
    # --- vision: ViT backbone
    (_VIT + r"pos_embed$", "vision_encoder.backbone.embeddings.position_embeddings"),
    (_VIT + r"patch_embed\.proj\.", _PATCH),
    (_VIT + r"ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (_VIT + r"blocks\.(\d+)\.norm([12])\.", _VL + r"layer_norm\2."),
    (_VIT + r"blocks\.(\d+)\.attn\.qkv\.", _VL + "attention.qkv."),
    (_VIT + r"blocks\.(\d+)\.attn\.proj\.", _VL + "attention.o_proj."),
    (_VIT + r"blocks\.(\d+)\.mlp\.(fc[12])\.", _VL + r"mlp.\2."),
    # --- vision: FPN neck (scale_layers.1 is the GELU between the two transposed convs)
    (_FPN + r"dconv_2x2_0\.", _NL + "scale_layers.0."),
    (_FPN + r"dconv_2x2_1\.", _NL + "scale_layers.2."),
    (_FPN + r"(?:dconv|maxpool)_2x2\.", _NL + "scale_layers.0."),
    (_FPN + r"conv_1x1\.", _NL + "proj1."),
    (_FPN + r"conv_3x3\.", _NL + "proj2."),
    # --- text: CLIP encoder and the resizer into the detector's width
    (_TEXT + r"token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (_TEXT + r"positional_embedding$", "text_encoder.text_model.embeddings.position_embedding.weight"),  # noqa: E501
    (_TEXT + r"ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (_TEXT + r"text_projection$", TEXT_PROJECTION_KEY),
    (_TEXT_BLOCK + r"attn\.", _TL + "self_attn."),
    (_TEXT_BLOCK + r"ln_([12])\.", _TL + r"layer_norm\2."),
    (_TEXT_BLOCK + r"mlp\.c_fc\.", _TL + "mlp.fc1."),
    (_TEXT_BLOCK + r"mlp\.c_proj\.", _TL + "mlp.fc2."),
    (r"backbone\.language_backbone\.resizer\.", "text_projection."),
    # --- geometry (box/point prompt) encoder
    (_GEO + r"cross_attn_image\.out_proj\.", r"geometry_encoder.layers.\1.cross_attn.o_proj."),
    (_GEO + r"cross_attn_image\.", r"geometry_encoder.layers.\1.cross_attn."),
    (_GEO + r"self_attn\.out_proj\.", r"geometry_encoder.layers.\1.self_attn.o_proj."),
    (_GEO + r"self_attn\.", r"geometry_encoder.layers.\1.self_attn."),
    (_GEO + r"linear([12])\.", r"geometry_encoder.layers.\1.mlp.fc\2."),
    (_GEO + r"norm([123])\.", r"geometry_encoder.layers.\1.layer_norm\2."),
    (r"geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    # --- DETR encoder (image features attend to the prompt)
    (_ENC + r"cross_attn(?:_image)?\.out_proj\.", r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (_ENC + r"cross_attn(?:_image)?\.", r"detr_encoder.layers.\1.cross_attn."),
    (_ENC + r"self_attn\.out_proj\.", r"detr_encoder.layers.\1.self_attn.o_proj."),
    (_ENC + r"self_attn\.", r"detr_encoder.layers.\1.self_attn."),
    (_ENC + r"linear([12])\.", r"detr_encoder.layers.\1.mlp.fc\2."),
    (_ENC + r"norm([123])\.", r"detr_encoder.layers.\1.layer_norm\2."),
    # --- DETR decoder: queries, presence token, box heads and layers
    (_DEC + r"(query_embed|reference_points|presence_token)\.", r"detr_decoder.\1."),
    (_DEC + r"(instance_query_embed|instance_reference_points)\.", r"detr_decoder.\1."),
    (_DEC + r"presence_token_head\.layers\.(\d+)\.", _shifted("detr_decoder.presence_head.")),
    (_DEC + r"presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (_DEC + r"norm\.", "detr_decoder.output_layer_norm."),
    (_DEC + r"bbox_embed\.layers\.(\d+)\.", _shifted("detr_decoder.box_head.")),
    (_DEC + r"instance_bbox_embed\.layers\.(\d+)\.", _shifted("detr_decoder.instance_box_head.")),
    (_DEC + r"ref_point_head\.layers\.(\d+)\.", _shifted("detr_decoder.ref_point_head.")),
    (_DEC + r"boxRPB_embed_x\.layers\.(\d+)\.", _shifted("detr_decoder.box_rpb_embed_x.")),
    (_DEC + r"boxRPB_embed_y\.layers\.(\d+)\.", _shifted("detr_decoder.box_rpb_embed_y.")),
    (_DEC + r"layers\.(\d+)\.self_attn\.out_proj\.", r"detr_decoder.layers.\1.self_attn.o_proj."),
    (_DEC + r"layers\.(\d+)\.self_attn\.", r"detr_decoder.layers.\1.self_attn."),
    (_DL + r"ca_text\.out_proj\.", r"detr_decoder.layers.\1.text_cross_attn.o_proj."),
    (_DEC + r"layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (_DL + r"cross_attn\.out_proj\.", r"detr_decoder.layers.\1.vision_cross_attn.o_proj."),
    (_DEC + r"layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (_DEC + r"layers\.(\d+)\.linear([12])\.", r"detr_decoder.layers.\1.mlp.fc\2."),
    (_DEC + r"layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (_DEC + r"layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (_DEC + r"layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (_DEC + r"layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    # --- scoring of queries against the prompt
    (r"dot_prod_scoring\.prompt_mlp\.layers\.(\d+)\.", _shifted("dot_product_scoring.text_mlp.")),
    (r"dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    # --- mask decoder
    (_SEG + r"pixel_decoder\.", "mask_decoder.pixel_decoder."),
    (_SEG + r"(?:mask_predictor\.)?mask_embed\.layers\.(\d+)\.", r"mask_decoder.mask_embedder.layers.\1."),  # noqa: E501
    (_SEG + r"instance_seg_head\.", "mask_decoder.instance_projection."),
    (_SEG + r"semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (_SEG + r"cross_attend_prompt\.out_proj\.", "mask_decoder.prompt_cross_attn.o_proj."),
    (_SEG + r"cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (_SEG + r"cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
)  # fmt: skip
_COMPILED = tuple((re.compile(pattern), repl) for pattern, repl in RENAMES)
DROPPED = re.compile(r".*\.attn\.freqs_cis$")  # rotary tables, recomputed by transformers
# native weights transformers' detector has no use for: the point-prompt projections (its
# concept detector takes text and boxes only)
UNUSED = re.compile(r"geometry_encoder\.points_(direct|pool|pos_enc)_project\.")


def _has_class_token(positions: int) -> bool:
    """True for a position count of 1 + n x n (577 = 1 + 24 x 24 at SAM 3's pretraining size)."""
    square = math.isqrt(positions - 1) ** 2 == positions - 1
    return square and math.isqrt(positions) ** 2 != positions


def hf_key(native: str) -> str:
    """The transformers name of one native weight name (unchanged when no pattern matches).

    Args:
        native: a native image-model key without the ``detector.`` prefix, e.g.
            ``transformer.decoder.layers.0.norm1.weight``.

    Returns:
        The Sam3Model key, e.g. ``detr_decoder.layers.0.vision_cross_attn_layer_norm.weight``;
        fused projections keep their fused name (``...attention.qkv.weight``,
        ``...self_attn.in_proj_weight``) until :func:`split_fused` splits them.
    """
    for pattern, repl in _COMPILED:
        match = pattern.match(native)
        if match is None:
            continue
        if "{}" in repl:  # MLP heads: native layers.0/1/2 are transformers' layer1/2/3
            return repl.format(int(match.group(1)) + 1) + native[match.end() :]
        return match.expand(repl) + native[match.end() :]
    return native


def fused_names(key: str) -> list[str] | None:
    """The q, k and v names of a fused projection key; None for any other key.

    Args:
        key: a transformers key (after :func:`hf_key`), e.g. ``...attention.qkv.weight`` or
            ``...self_attn.in_proj_bias``.

    Returns:
        e.g. [``...attention.q_proj.weight``, ``...k_proj.weight``, ``...v_proj.weight``].
    """
    if ".qkv." in key:
        return [key.replace(".qkv.", f".{p}_proj.") for p in "qkv"]
    if key.endswith(("in_proj_weight", "in_proj_bias")):
        head, _, kind = key.rpartition("in_proj_")
        return [f"{head}{p}_proj.{kind}" for p in "qkv"]
    return None


def split_fused(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Split a fused q/k/v weight or bias into three along its output (first) axis.

    Args:
        key: a transformers key (after :func:`hf_key`).
        tensor: its (3d, in) weight or (3d,) bias.

    Returns:
        [(q key, q), (k key, k), (v key, v)] for fused keys (:func:`fused_names`);
        [(key, tensor)] for any other key.
    """
    names = fused_names(key)
    if names is None:
        return [(key, tensor)]
    if tensor.shape[0] % 3:
        raise ValueError(f"{key}: fused projection of {tensor.shape[0]} rows is not 3 x d")
    return list(zip(names, torch.chunk(tensor, 3, dim=0), strict=True))


def detector_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The image model's weights of a native checkpoint.

    Args:
        state: a native state dict: a full SAM 3 checkpoint (``detector.*`` and ``tracker.*``
            keys, as in ``sam3.pt``) or a bare image model's (no prefix).

    Returns:
        (image-model weights without the ``detector.`` prefix, number of tracker weights left
        out).
    """
    if not any(k.startswith(DETECTOR_PREFIX) for k in state):
        return dict(state), 0
    n = len(DETECTOR_PREFIX)
    detector = {k[n:]: v for k, v in state.items() if k.startswith(DETECTOR_PREFIX)}
    return detector, sum(1 for k in state if k.startswith(TRACKER_PREFIX))


def native_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a native SAM 3 image model's weights to a transformers Sam3Model state dict.

    Args:
        state: native image-model weights (see :func:`detector_state`).

    Returns:
        Sam3Model weights: renamed (:func:`hf_key`), fused projections split, the position
        table without its class-token row, the CLIP text projection transposed, rotary tables
        dropped. Tensors keep their dtype; split ones are contiguous copies.
    """
    out: dict[str, torch.Tensor] = {}
    for native, tensor in state.items():
        if DROPPED.match(native):
            continue
        key = hf_key(native)
        if key == POSITION_KEY and _has_class_token(tensor.shape[1]):
            tensor = tensor[:, 1:]
        elif key == TEXT_PROJECTION_KEY:
            tensor = tensor.T
        for name, part in split_fused(key, tensor):
            out[name] = part.contiguous()
    return out
