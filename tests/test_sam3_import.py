"""MedSAM3 LoRA files and native SAM 3 checkpoints into the sam3 backend (tiny random models).

The LoRA test writes a file in MedSAM3's own format (``torch.save`` of nn.Parameters named
``<native module>.lora.lora_A`` (in, r) / ``.lora.lora_B`` (r, out)) and checks every merged
weight against W + (alpha / r) (A B)^T computed here by hand. The names of the full-size
native model and of MedSAM3's LoRA pairs come from ``tests/data/sam3_native_names.json.gz``.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from medsam3.cli import main  # noqa: E402
from medsam3.models.sam3 import build_sam3  # noqa: E402
from medsam3.models.sam3_checkpoint import (  # noqa: E402
    CheckpointError,
    load_processor,
    tiny_video_config,
)
from medsam3.models.sam3_import import (  # noqa: E402
    import_weights,
    load_native_detector,
    lora_updates,
    read_tensor_file,
)
from medsam3.models.sam3_native import fused_names, hf_key, native_to_hf  # noqa: E402

NAMES = Path(__file__).parent / "data" / "sam3_native_names.json.gz"
RANK, ALPHA = 4, 8.0
# native module -> (transformers weight, rows of the native output it adapts: None = all)
HAND = {
    "backbone.vision_backbone.trunk.blocks.1.attn.qkv": None,  # fused: three targets
    "backbone.vision_backbone.trunk.blocks.0.attn.proj": (
        "vision_encoder.backbone.layers.0.attention.o_proj.weight", None),
    "backbone.vision_backbone.trunk.blocks.0.mlp.fc2": (
        "vision_encoder.backbone.layers.0.mlp.fc2.weight", None),
    "backbone.language_backbone.encoder.transformer.resblocks.0.attn.v_proj": (
        "text_encoder.text_model.encoder.layers.0.self_attn.v_proj.weight", None),
    "backbone.language_backbone.encoder.transformer.resblocks.1.attn.out_proj": (
        "text_encoder.text_model.encoder.layers.1.self_attn.out_proj.weight", None),
    "backbone.language_backbone.encoder.transformer.resblocks.1.mlp.c_fc": (
        "text_encoder.text_model.encoder.layers.1.mlp.fc1.weight", None),
    "transformer.encoder.layers.0.cross_attn_image.out_proj": (
        "detr_encoder.layers.0.cross_attn.o_proj.weight", None),
    "transformer.decoder.layers.0.ca_text.k_proj": (
        "detr_decoder.layers.0.text_cross_attn.k_proj.weight", None),
    "transformer.decoder.layers.0.linear2": ("detr_decoder.layers.0.mlp.fc2.weight", None),
    "geometry_encoder.encode.0.linear1": ("geometry_encoder.layers.0.mlp.fc1.weight", None),
    "segmentation_head.cross_attend_prompt.q_proj": (
        "mask_decoder.prompt_cross_attn.q_proj.weight", None),
    "dot_prod_scoring.hs_proj": ("dot_product_scoring.query_proj.weight", None),
}  # fmt: skip
QKV = "vision_encoder.backbone.layers.1.attention.{}_proj.weight"


@pytest.fixture(scope="module")
def names() -> dict:
    with gzip.open(NAMES, "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Sam3Model (detector only, model_type sam3) checkpoint folder."""
    torch.manual_seed(0)
    model = transformers.Sam3Model(tiny_video_config().detector_config).eval()
    folder = tmp_path_factory.mktemp("tiny_sam3")
    model.save_pretrained(folder, safe_serialization=True)
    load_processor(None, model.config.image_size).save_pretrained(folder)
    return folder


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def lora_file(base, tmp_path_factory) -> tuple[Path, dict]:
    """best_lora_weights.pt in MedSAM3's format for the HAND modules of the tiny model."""
    w = _weights(base)
    gen = torch.Generator().manual_seed(7)
    pairs = {}
    for module, target in HAND.items():
        out_dim, in_dim = (3 * w[QKV.format("q")].shape[0], w[QKV.format("q")].shape[1]) if (
            target is None) else w[target[0]].shape  # fmt: skip
        a = torch.nn.Parameter(torch.randn(in_dim, RANK, generator=gen))
        b = torch.nn.Parameter(torch.randn(RANK, out_dim, generator=gen))
        pairs[f"{module}.lora.lora_A"], pairs[f"{module}.lora.lora_B"] = a, b
    path = tmp_path_factory.mktemp("lora") / "best_lora_weights.pt"
    torch.save(pairs, path)
    return path, {k: v.detach() for k, v in pairs.items()}


def _expected(base_w: dict, pairs: dict) -> dict:
    """W + (alpha / r) (A B)^T for every adapted weight, computed in float64."""
    scale, out = ALPHA / RANK, {}
    for module, target in HAND.items():
        a, b = pairs[f"{module}.lora.lora_A"].double(), pairs[f"{module}.lora.lora_B"].double()
        delta = scale * (a @ b).T  # (out, in), as nn.Linear stores W
        if target is None:
            d = delta.shape[0] // 3
            for i, part in enumerate("qkv"):
                key = QKV.format(part)
                out[key] = base_w[key].double() + delta[i * d : (i + 1) * d]
        else:
            out[target[0]] = base_w[target[0]].double() + delta
    return out


def test_native_names_map_onto_transformers_sam3(names):
    with torch.device("meta"):
        hf = transformers.Sam3Model(transformers.Sam3Config()).state_dict()
    native = {k: torch.empty(s, device="meta") for k, s in names["native"].items()}
    converted = native_to_hf(native)
    assert set(hf) <= set(converted)  # every Sam3Model weight comes from the checkpoint
    assert {k for k in converted if k not in hf} == {
        f"geometry_encoder.points_{p}.{t}"
        for p in ("direct_project", "pool_project", "pos_enc_project")
        for t in ("weight", "bias")
    }  # point prompts: transformers' concept detector takes none
    for key, tensor in hf.items():
        assert converted[key].shape == tensor.shape, key
    assert converted["vision_encoder.backbone.embeddings.position_embeddings"].shape[1] == 576
    lora = {k: torch.empty(s, device="meta") for k, s in names["medsam3_lora"].items()}
    updates = lora_updates(lora)
    # 32 ViT qkv pairs adapt 3 weights each; the 3 point-prompt projections are skipped
    assert len(updates) == len(lora) // 2 + 2 * 32 - 3
    for u in updates:
        assert u.key in hf and hf[u.key].shape == (u.up.shape[0], u.down.shape[1]), u.key
        assert u.scale == 32.0 / 16


def test_lora_file_folds_as_computed_by_hand(base, lora_file, tmp_path):
    path, pairs = lora_file
    out = import_weights(tmp_path / "medsam3", checkpoint=base, lora=path, alpha=ALPHA)
    base_w, merged = _weights(base), _weights(out)
    expected = _expected(base_w, pairs)
    assert len(expected) == len(HAND) + 2
    for key, value in merged.items():
        if key in expected:
            torch.testing.assert_close(value.double(), expected[key], rtol=0, atol=1e-5)
            assert not torch.equal(value, base_w[key]), key
        else:
            assert torch.equal(value, base_w[key]), key  # nothing else changes
    info = json.loads((out / "medsam3_import.json").read_text())
    assert info["lora"]["rank"] == RANK and info["lora"]["weights"] == len(expected)
    assert info["lora_folded"] and info["alpha"] == ALPHA
    # folding at load time (segment --lora FILE) gives the same weights
    seg = build_sam3(base, lora=path, lora_alpha=ALPHA)
    for key, value in seg.detector.state_dict().items():
        if key in merged:
            torch.testing.assert_close(value, merged[key], rtol=0, atol=1e-6)


def test_lora_as_peft_adapter_matches_the_folded_weights(base, lora_file, tmp_path):
    path, _ = lora_file
    out = import_weights(tmp_path / "peft", checkpoint=base, lora=path, alpha=ALPHA, peft=True)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert all(torch.equal(v, _weights(base)[k]) for k, v in _weights(out).items())
    folded = build_sam3(base, lora=path, lora_alpha=ALPHA).detector.state_dict()
    adapted = build_sam3(out, lora=out / "adapter").detector.state_dict()
    for key, value in folded.items():
        torch.testing.assert_close(adapted[key], value, rtol=0, atol=1e-5)


def _nativise(hf: dict, native_names: list[str]) -> dict:
    """A native-format state dict holding the tiny model's weights (the inverse conversion)."""
    out = {}
    for name in native_names:
        key = hf_key(name)
        parts = fused_names(key)
        if parts is not None:
            if all(p in hf for p in parts):  # q, k, v stacked into the fused projection
                out[name] = torch.cat([hf[p] for p in parts])
        elif key.endswith("position_embeddings"):  # plus a class-token row
            out[name] = torch.cat([torch.full_like(hf[key][:, :1], 9.0), hf[key]], dim=1)
        elif key == "text_encoder.text_projection.weight":  # stored (in, out) natively
            out[name] = hf[key].T.contiguous()
        elif key in hf:
            out[name] = hf[key]
    return out


def test_native_checkpoint_converts_to_the_same_model(base, names, tmp_path):
    hf = _weights(base)
    tiny = [n for n in names["native"] if not n.endswith("freqs_cis")]
    native = _nativise(hf, tiny)
    assert len(native) > 200
    sam3_pt = tmp_path / "sam3.pt"
    torch.save({"model": {f"detector.{k}": v for k, v in native.items()}}, sam3_pt)
    model, info = load_native_detector(sam3_pt, base / "config.json")
    assert info["tracker_weights_skipped"] == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, hf[key]), key
    out = tmp_path / "converted"
    code = main(["import-weights", str(out), "--native", str(sam3_pt), "--config",
                 str(base / "config.json")])  # fmt: skip
    assert code == 0 and json.loads((out / "config.json").read_text())["model_type"] == "sam3"


class _Marker:
    """Unpickling this object would create a marker file (it must never happen)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickles_that_need_code_are_refused(base, tmp_path):
    marker = tmp_path / "UNPICKLED"
    evil = tmp_path / "best_lora_weights.pt"
    torch.save({"x.lora.lora_A": _Marker(str(marker))}, evil, _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_tensor_file(evil)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="never runs code"):
        build_sam3(base, lora=tmp_path / "raw.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no LoRA tensors"):
        lora_updates({"vision.weight": torch.zeros(2, 2)})
    half = {"transformer.decoder.layers.0.linear1.lora.lora_A": torch.zeros(8, 2)}
    with pytest.raises(CheckpointError, match="lora_A only"):
        lora_updates(half)


def test_cli_segments_with_a_lora_file(base, lora_file, tmp_path, capsys):
    path, _ = lora_file
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(np.linspace(0, 255, 40 * 56).reshape(40, 56).astype(np.uint8)).save(image)
    args = ["segment", str(image), "-p", "polyp", "-o", str(tmp_path / "out"), "--backend",
            "sam3", "--checkpoint", str(base), "--lora", str(path),
            "--lora-alpha", str(ALPHA)]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "out" / "polyp.png").is_file()
    assert main(["segment", str(image), "-p", "polyp", "-o", str(tmp_path / "o2"), "--lora",
                 str(path)]) == 1  # fmt: skip
    assert "--backend sam3" in capsys.readouterr().err
