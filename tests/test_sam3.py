"""The sam3 backend end to end with tiny randomly initialised SAM 3 models on real images.

Models are built here from tiny configs, saved as safetensors with processor/tokenizer files,
and reloaded through ``build_sam3``; weights are random, so only shapes, dtypes, ranges,
geometry and the plumbing (feature reuse, tracking, LoRA, refusal of pickles) are asserted.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from medsam3.models.build import load_model  # noqa: E402
from medsam3.models.clip_tokenizer import offline_clip_tokenizer  # noqa: E402
from medsam3.models.inputs import InputError  # noqa: E402
from medsam3.models.preprocess import ct_window_for, to_uint8_rgb  # noqa: E402
from medsam3.models.sam3 import Sam3Segmenter, build_random_sam3, build_sam3, mask_box  # noqa: E402
from medsam3.models.sam3_checkpoint import (  # noqa: E402
    CheckpointError,
    load_processor,
    tiny_video_config,
)

PHRASES = ["liver", "left kidney", "Fetal head!", "pleural effusion (right)", "COVID-19 lesion"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny sam3_video checkpoint: config + model.safetensors + processor/tokenizer files."""
    config = tiny_video_config(max_objects=2)
    config.score_threshold_detection, config.new_det_thresh = 0.2, 0.2
    torch.manual_seed(0)
    model = transformers.Sam3VideoModel(config).eval()
    folder = tmp_path_factory.mktemp("sam3_tiny")
    model.save_pretrained(folder, safe_serialization=True)
    load_processor(None, config.image_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def seg(ckpt) -> Sam3Segmenter:
    return build_sam3(ckpt, score_threshold=0.0)


@pytest.fixture(scope="module")
def ct_hu() -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def mni_stack() -> np.ndarray:
    """Six axial slices (z, y, x) of nilearn's packaged MNI152 template (no download)."""
    datasets = pytest.importorskip("nilearn.datasets")
    img = datasets.load_mni152_template(resolution=2)
    vol = np.transpose(np.asarray(img.get_fdata(), np.float32), (2, 1, 0))
    return vol[36:42]


def check_result(res, shape) -> None:
    """Shapes, dtypes, ranges and geometry of a ConceptResult."""
    assert res.mask.shape == shape and res.mask.dtype == np.uint8
    assert set(np.unique(res.mask)) <= {0, 1}
    assert 0.0 <= res.presence <= 1.0
    union = np.zeros(shape, bool)
    for inst in res.instances:
        assert inst.mask.shape == shape and inst.mask.dtype == bool and inst.mask.any()
        assert inst.box == mask_box(inst.mask) and len(inst.box) == 2 * len(shape)
        assert 0.0 <= inst.score <= 1.0
        union |= inst.mask
    assert np.array_equal(union, res.mask.astype(bool))
    scores = [inst.score for inst in res.instances]
    assert scores == sorted(scores, reverse=True)
    json.dumps(res.extra)


def test_mask_box_is_the_tight_end_exclusive_box(ct_hu):
    lung = ct_hu < -400  # real CT: air and lung pixels, several components
    for mask in (lung, lung[:64, 20:90], np.stack([lung, np.zeros_like(lung), lung[::-1]])):
        idx = np.nonzero(mask)
        expected = [int(i.min()) for i in idx][::-1] + [int(i.max()) + 1 for i in idx][::-1]
        assert mask_box(mask) == tuple(expected)
    single = np.zeros((5, 7), bool)
    single[3, 6] = True
    assert mask_box(single) == (6, 3, 7, 4)


def test_image_ct_windows_and_feature_reuse(seg, ct_hu):
    calls = []
    hook = seg.detector.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = seg.segment(ct_hu, ["liver", "hepatic vein", "lung"], modality="ct")
    finally:
        hook.remove()
    assert len(calls) == 2  # liver + hepatic vein share the liver window; lung has its own
    assert list(out) == ["liver", "hepatic vein", "lung"]
    for concept, res in out.items():
        check_result(res, ct_hu.shape)
        assert res.extra["ct_window"] == list(ct_window_for(concept))
        assert res.instances  # score_threshold=0 keeps every non-empty query mask
    assert seg.checkpoint_digest.startswith("sha256:")


def test_shared_features_match_plain_transformers_call(seg, ct_hu):
    """Batched decoding on reused vision features equals a plain Sam3Model forward pass."""
    rgb = to_uint8_rgb(ct_hu, "ct", "lung")
    res = seg.segment(ct_hu, ["kidney", "lung"], modality="ct")["lung"]
    inputs = seg.processor(images=rgb, text="lung", return_tensors="pt")
    with torch.inference_mode():
        outputs = seg.detector(**{k: v for k, v in inputs.items() if k != "original_sizes"})
    ref = seg.processor.post_process_instance_segmentation(
        outputs, threshold=0.0, mask_threshold=0.5, target_sizes=[ct_hu.shape]
    )[0]
    assert res.presence == pytest.approx(float(outputs.presence_logits.sigmoid()), abs=1e-4)
    kept = ref["masks"].bool().numpy()
    assert np.array_equal(res.mask.astype(bool), kept.any(axis=0))


def test_box_prompt_changes_detections_and_bad_prompts(seg, ct_hu):
    plain = seg.segment(ct_hu, ["liver"], modality="ct")["liver"]
    boxed = seg.segment(ct_hu, ["liver"], modality="ct", boxes={"liver": [(20, 30, 90, 100)]})
    check_result(boxed["liver"], ct_hu.shape)
    a = sorted(i.score for i in plain.instances)
    b = sorted(i.score for i in boxed["liver"].instances)
    assert a != b
    with pytest.raises(InputError, match="points"):
        seg.segment(ct_hu, ["liver"], points={"liver": [(3, 4)]})
    with pytest.raises(InputError, match="x1>x0"):
        seg.segment(ct_hu, ["liver"], boxes={"liver": [(50, 5, 10, 40)]})
    with pytest.raises(InputError, match="not in concepts"):
        seg.segment(ct_hu, ["liver"], boxes={"lung": [(0, 0, 5, 5)]})


@pytest.mark.parametrize("mode", ["per_slice", "propagate"])
def test_volume_modes(seg, mni_stack, mode):
    seg.volume_mode = mode
    try:
        out = seg.segment(mni_stack, ["brain", "ventricle"], modality="mri", kind="volume")
    finally:
        seg.volume_mode = "propagate"
    for res in out.values():
        check_result(res, mni_stack.shape)
        assert res.extra["mode"] == mode
        assert len(res.extra["slice_presence"]) == mni_stack.shape[0]
        assert res.presence == pytest.approx(max(res.extra["slice_presence"]), abs=1e-4)
    if mode == "propagate":
        res = out["brain"]
        assert 0 <= res.extra["start_slice"] < mni_stack.shape[0]
        assert len(res.extra["scan_scores"]) == mni_stack.shape[0]  # 6 slices <= scan_slices
        tracked = sum(len(r.instances) for r in out.values())
        assert 1 <= tracked <= 2  # thresholds 0.2 admit objects; the config caps them at 2
        assert any(inst.mask.any(axis=(1, 2)).sum() > 1 for inst in res.instances)


def test_video_tracking_on_ultrasound_cine(seg):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    frames = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")).pixel_array[:4]
    out = seg.segment(frames, ["heart", "fetal head"], modality="ultrasound")
    for res in out.values():
        check_result(res, frames.shape[:3])
        assert res.extra["start_slice"] == 0 and res.extra["mode"] == "propagate"
        assert len(res.extra["slice_presence"]) == frames.shape[0]
    tracks = [inst for res in out.values() for inst in res.instances]
    assert 1 <= len(tracks) <= 2  # max_num_objects=2 per session
    assert any(inst.mask.any(axis=(1, 2)).sum() > 1 for inst in tracks)  # tracked over frames


def test_detector_only_checkpoint_uses_offline_tokenizer(seg, ckpt, mni_stack, tmp_path):
    seg.detector.save_pretrained(tmp_path, safe_serialization=True)  # model_type "sam3"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "sam3"
    det_only = load_model("sam3", checkpoint=str(tmp_path), score_threshold=0.0)
    assert det_only.video_model is None
    assert det_only.processor.tokenizer is offline_clip_tokenizer()
    res = det_only.segment(mni_stack[:2], ["brain"], modality="mri", kind="volume")["brain"]
    check_result(res, mni_stack[:2].shape)
    assert res.extra["mode"] == "per_slice" and "no tracker" in res.extra["note"]


def test_lora_adapter_changes_outputs(seg, ckpt, ct_hu, tmp_path):
    peft = pytest.importorskip("peft")
    base = transformers.Sam3Model.from_pretrained(ckpt, local_files_only=True)
    torch.manual_seed(1)
    cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, cfg).save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    tuned = build_sam3(ckpt, lora=tmp_path / "lora", score_threshold=0.0)
    assert tuned.video_model.detector_model is tuned.detector
    assert tuned.checkpoint_digest != seg.checkpoint_digest
    a = seg.segment(ct_hu, ["liver"], modality="ct")["liver"]
    b = tuned.segment(ct_hu, ["liver"], modality="ct")["liver"]
    assert a.presence != pytest.approx(b.presence, abs=1e-6) or [i.score for i in a.instances] != [
        i.score for i in b.instances
    ]


def test_sharded_checkpoint_loads_and_missing_shard_is_reported(seg, ckpt, tmp_path):
    seg.video_model.save_pretrained(tmp_path, max_shard_size="20MB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = build_sam3(tmp_path)  # no tokenizer files here: offline CLIP tokenizer
    assert loaded.processor.tokenizer is offline_clip_tokenizer()
    for name, tensor in loaded.detector.state_dict().items():
        assert torch.equal(tensor, seg.detector.state_dict()[name]), name
    shards[0].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        build_sam3(tmp_path)


class _Marker:
    """Unpickling this object would create a marker file (it must never happen)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_bad_checkpoints_are_refused_and_never_unpickled(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="needs a local checkpoint directory.*config.json"):
        build_sam3(None)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_sam3(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        build_sam3(empty)
    marker = tmp_path / "UNPICKLED"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((ckpt / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="pickle"):
        build_sam3(pickled)
    with pytest.raises(CheckpointError, match="is a file"):
        build_sam3(pickled / "pytorch_model.bin")
    lora = tmp_path / "lora_bin"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    (lora / "adapter_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        build_sam3(ckpt, lora=lora)
    (pickled / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        build_sam3(pickled)
    assert not marker.exists()


def test_offline_tokenizer_matches_open_clip(ckpt):
    from open_clip.tokenizer import SimpleTokenizer

    ours, ref = offline_clip_tokenizer(), SimpleTokenizer()
    saved = transformers.CLIPTokenizer.from_pretrained(ckpt, local_files_only=True)
    for phrase in PHRASES:
        ids = ref(phrase, context_length=32)[0]
        expected = ids[ids != 0].tolist()
        assert ours(phrase)["input_ids"] == expected
        assert saved(phrase)["input_ids"] == expected
    assert ours("liver")["input_ids"] == [49406, 12639, 49407]
    assert len(ours) == 49408


def test_build_random_tiny():
    seg = build_random_sam3("tiny", seed=3)
    params = sum(p.numel() for p in seg.detector.parameters())
    assert params < 10_000_000 and seg.checkpoint_digest == "random:tiny:3"
    img = np.linspace(0, 255, 64 * 80, dtype=np.float32).reshape(64, 80).astype(np.uint8)
    res = seg.segment(img, ["polyp"], modality="endoscopy")["polyp"]
    check_result(res, img.shape)
    with pytest.raises(ValueError, match="scale"):
        build_random_sam3("huge")


@pytest.mark.parametrize("mode", ["per_slice", "propagate"])
def test_batched_encoding_gives_the_same_results(seg, mni_stack, mode):
    """Slices encoded 4 at a time give what one at a time gives (scan and per_slice)."""
    outs = {}
    seg.volume_mode = mode
    try:
        for batch in (1, 4):
            seg.encode_batch = batch
            outs[batch] = seg.segment(mni_stack, ["brain", "ventricle"], modality="mri",
                                      kind="volume")  # fmt: skip
    finally:
        seg.volume_mode, seg.encode_batch = "propagate", None
    for concept, one in outs[1].items():
        four = outs[4][concept]
        assert np.array_equal(one.mask, four.mask), concept
        assert one.presence == pytest.approx(four.presence, abs=1e-6)
        np.testing.assert_allclose(one.extra["slice_presence"], four.extra["slice_presence"],
                                   atol=1e-4)  # fmt: skip
        assert [round(i.score, 5) for i in one.instances] == [
            round(i.score, 5) for i in four.instances
        ]
        for a, b in zip(one.instances, four.instances, strict=True):
            assert np.array_equal(a.mask, b.mask)


def test_out_of_memory_halves_the_batch_and_computes_every_item_once():
    from medsam3.models.batching import auto_batch_size, in_batches

    calls, sizes = [], []

    def fn(items):
        calls.append(list(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return [x * 10 for x in items]

    got = list(in_batches(list(range(7)), fn, 8, on_resize=sizes.append))
    assert [r for _, _, batch in got for r in batch] == [x * 10 for x in range(7)]
    assert sizes == [4, 2] and [(a, b) for a, b, _ in got] == [(0, 2), (2, 4), (4, 6), (6, 7)]

    def fails(items):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(in_batches([1, 2], fails, 2))
    with pytest.raises(ValueError):  # other errors are not retried
        list(in_batches([1, 2], lambda items: int("x"), 2))
    assert auto_batch_size("cpu", 10**9) == 1  # one item per pass: fastest on a CPU
