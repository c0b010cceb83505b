"""The compact backend end to end: real LiteMedSAM, MiniLM and the shipped concept head."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from medsam3 import load_model
from medsam3.models.base import ConceptResult
from medsam3.models.inputs import InputError


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return load_model(backend="compact")


@pytest.fixture(scope="module")
def encoder_calls(model):
    calls = []
    handle = model.sam.net.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


@pytest.fixture(scope="module")
def mri_slice() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    vol = load_mni152_template().get_fdata().astype(np.float32)
    return np.ascontiguousarray(np.rot90(vol[:, :, vol.shape[2] // 2]))


def test_segment_mri_slice_shapes_and_encode_once(model, encoder_calls, mri_slice):
    before = len(encoder_calls)
    phrases = ["brain", "polyp", "fetal head", "zorbly quantum gizmo"]
    res = model.segment(mri_slice, phrases, modality="mri")
    assert len(encoder_calls) - before == 1, "four phrases must share one image encoding"
    assert list(res) == phrases
    for r in res.values():
        assert isinstance(r, ConceptResult)
        assert r.mask.shape == mri_slice.shape and r.mask.dtype == np.uint8
        assert set(np.unique(r.mask)) <= {0, 1}
        assert 0.0 <= r.presence <= 1.0
        for inst in r.instances:
            assert inst.mask.shape == mri_slice.shape and inst.mask.dtype == bool
            x0, y0, x1, y1 = inst.box
            assert 0 <= x0 < x1 <= mri_slice.shape[1] and 0 <= y0 < y1 <= mri_slice.shape[0]
    assert res["zorbly quantum gizmo"].nearest_known, "unknown phrases name their nearest concepts"
    assert res["polyp"].nearest_known == []
    assert res["polyp"].presence < model.presence_threshold, "no polyp in a brain MRI"


def test_only_large_components_go_to_the_decoder(model, mri_slice):
    """Fragments under refine_min_share of the largest component keep their dense shape."""
    from medsam3.models.preprocess import to_uint8_rgb

    state = model.encode_plane(to_uint8_rgb(mri_slice, "mri"))
    dense = torch.full((1, 256, 256), -10.0)
    dense[:, 60:160, 60:160] = 10.0  # 10,000 px in the frame
    for y in (20, 180, 220):
        dense[:, y : y + 6, 20:26] = 10.0  # 36 px each: 0.4% of the large one
    boxes = []
    decode = model.sam.decode
    model.sam.decode = lambda *a, **k: boxes.append(len(k["boxes"])) or decode(*a, **k)
    try:
        mask = model.refine(state, dense, "brain")
    finally:
        model.sam.decode = decode
    assert boxes == [1], "one decoder box: the large component only"
    frame = (dense[0] > 0).numpy()
    scale = np.array(mri_slice.shape) / np.array(state.prep.resized)
    for y in (20, 180, 220):  # each fragment is still there, as drawn
        cy, cx = int((y + 3) * scale[0]), int(23 * scale[1])
        assert frame[y + 3, 23] and mask[cy, cx]


def test_an_unsure_dense_mask_is_cut_below_its_peak(model, mri_slice):
    """With mask_margin m, dense logits peaking below m are cut at peak - m, others at 0."""
    from medsam3.models.compact import load_head
    from medsam3.models.preprocess import to_uint8_rgb

    state = model.encode_plane(to_uint8_rgb(mri_slice, "mri"))
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    bump = (-((yy - 100) ** 2 + (xx - 90) ** 2) / 400.0)[None]  # peak 0, falls off smoothly
    saved = model.mask_margin
    try:
        model.mask_margin = None
        at_zero = {shift: model.dense_mask(state, bump + shift) for shift in (-1.0, 3.0, 5.0)}
        model.mask_margin = 3.0
        unsure, sure = model.dense_mask(state, bump - 1.0), model.dense_mask(state, bump + 5.0)
        relaxed = model.dense_mask(state, bump + 5.0, offset=-2.0)
        absolute = model.dense_mask(state, bump - 1.0, relative=False)  # volumes, videos
    finally:
        model.mask_margin = saved
    assert not at_zero[-1.0].any(), "peak -1: nothing above 0 without a margin"
    assert unsure.any() and abs(int(unsure.sum()) - int(at_zero[3.0].sum())) <= 2
    assert np.array_equal(sure, at_zero[5.0]), "a sure mask (peak 5 >= 3) keeps the cut at 0"
    assert relaxed.sum() > sure.sum(), "a negative offset relaxes the model's own cut"
    assert not absolute.any(), "slices of a volume keep the cut at 0: an empty slice ends it"
    shipped = load_head()[2]["mask_margin"]
    assert saved is not None and saved == shipped, "the model reads the shipped head's fitted cut"


def test_unseen_subtype_is_present_where_its_parent_is(model, mri_slice):
    from medsam3.models.phrases import condition
    from medsam3.models.preprocess import to_uint8_rgb

    state = model.encode_plane(to_uint8_rgb(mri_slice, "mri"), "mri")
    phrases = ["anterior hippocampus", "hippocampus", "brain", "neoplastic polyp"]
    presence, _ = model.detect(state, phrases)
    text = torch.from_numpy(condition(phrases))
    with torch.no_grad():
        own = model.presence(model.head.decode(state.feats, text, coarse_only=True)[0], "mri")
    assert presence[0] == pytest.approx(max(own[0], own[1]))
    assert presence[1:3] == pytest.approx(own[1:3]), "phrases without a parent keep their own"
    assert presence[3] < model.presence_threshold, "no polyp, of any kind, in a brain MRI"


def test_masks_are_decoded_only_for_present_phrases(model, mri_slice, monkeypatch):
    """detect(mask_threshold=t) skips the 256 px decode of phrases below t and gives the
    others exactly the full decode's logits (the head's locate + fine_mask = decode)."""
    from medsam3.models.phrases import condition
    from medsam3.models.preprocess import to_uint8_rgb

    state = model.encode_plane(to_uint8_rgb(mri_slice, "mri"), "mri")
    phrases = ["brain", "polyp", "cerebrospinal fluid", "lung"]
    presence, full = model.detect(state, phrases)
    t = model.presence_threshold
    assert presence[0] >= t > presence[1], "a brain and no polyp on a brain MRI slice"
    for batch in (1, 64):  # a CPU decodes one phrase at a time, a GPU 64 (same code path)
        monkeypatch.setattr(model, "fine_batch", batch)
        gated_presence, gated = model.detect(state, phrases, mask_threshold=t)
        np.testing.assert_array_equal(gated_presence, presence)
        for k in range(len(phrases)):
            if presence[k] >= t:
                torch.testing.assert_close(gated[k], full[k], atol=1e-4, rtol=1e-4)
            else:
                assert gated[k] is None
    text = torch.from_numpy(condition(phrases))
    with torch.no_grad():
        logits, dense = model.head.decode(state.feats, text)
    torch.testing.assert_close(torch.stack(full), dense, atol=1e-4, rtol=1e-4)


def test_ct_phrases_share_encodings_per_window(model, encoder_calls):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    before = len(encoder_calls)
    res = model.segment(hu, ["liver", "hepatic tumor", "kidney", "spleen"], modality="ct")
    # liver / hepatic -> liver window; kidney / spleen -> soft-tissue window
    assert len(encoder_calls) - before == 2
    assert all(r.mask.shape == hu.shape for r in res.values())


def test_box_prompt_goes_to_the_decoder(model):
    img = np.zeros((96, 128, 3), np.uint8)
    img[30:70, 40:90] = (200, 120, 90)
    res = model.segment(img, ["skin lesion"], boxes={"skin lesion": [[36, 26, 94, 74]]})
    mask = res["skin lesion"].mask.astype(bool)
    assert res["skin lesion"].extra["prompt"] == "box"
    inside = mask[30:70, 40:90].mean()
    assert inside > 0.7 and mask.sum() < 1.5 * 40 * 50


def test_bad_inputs_raise_clear_errors(model, tmp_path):
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(InputError, match="empty"):
        model.segment(img, ["  "])
    with pytest.raises(InputError, match="channels"):
        model.segment(np.zeros((32, 32, 2), np.uint8), ["liver"], kind="image")
    with pytest.raises(InputError):
        model.segment(np.zeros((4, 32, 32, 2), np.uint8), ["liver"])
    bad = tmp_path / "head.pt"
    bad.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="safetensors"):
        load_model(backend="compact", checkpoint=str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(backend="compact", checkpoint=str(tmp_path / "missing.safetensors"))


def test_nan_pixels_are_replaced_not_propagated(model):
    img = np.random.default_rng(0).normal(size=(48, 40)).astype(np.float32)
    img[5:9, 5:9] = np.nan
    res = model.segment(img, ["lung"], modality="xray")
    assert res["lung"].mask.shape == img.shape
    assert np.isfinite(res["lung"].presence)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known regression of head v3 (docs/model_card.md, Known limits): fetal head Dice "
        "0.61-0.65 on these HC18 test images (previous head 0.93) and unrelated phrases "
        "pass presence on fetal ultrasound"
    ),
)
@pytest.mark.shared_data
def test_real_test_images_fetal_head_and_negative(model, shared_data):
    import csv

    from PIL import Image

    rows = [
        r
        for r in csv.DictReader(open(shared_data / "manifest.csv", encoding="utf-8"))
        if r["split"] == "test" and r["concept"] == "fetal head"
    ][:2]
    dices = []
    for r in rows:
        img = np.asarray(Image.open(shared_data / r["image"]))
        gt = np.asarray(Image.open(shared_data / r["mask"])) > 127
        negatives = ["polyp", "retinal vessel", "white blood cell", "lung", "skin lesion"]
        res = model.segment(img, ["fetal head", *negatives], modality="ultrasound")
        pred = res["fetal head"].mask.astype(bool)
        dices.append(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
        assert res["fetal head"].presence >= model.presence_threshold
        # known limit (model card): some phrases, e.g. "retinal vessel" or "lung", can pass the
        # presence threshold on unrelated images; a majority must be rejected
        rejected = [res[c].presence < model.presence_threshold for c in negatives]
        assert sum(rejected) >= 3, {c: res[c].presence for c in negatives}
    assert np.mean(dices) > 0.7, dices


def test_demo_chest_radiograph_is_shown_as_read_and_its_lungs_are_found(model, tmp_path):
    """The pydicom CR is MONOCHROME1; written uninverted, its lungs were white and missed."""
    from PIL import Image

    from medsam3.pipeline.demo import build_demo

    img = np.asarray(Image.open(build_demo(tmp_path).parent / "data" / "chest_xray.png"))
    res = model.segment(img, ["lung"], modality="xray")
    assert res["lung"].presence >= model.presence_threshold
    lung = res["lung"].mask.astype(bool)
    assert 0.15 < lung.mean() < 0.6
    assert img[lung].mean() < img[~lung].mean(), "lung fields are dark on a radiograph"


def test_bfloat16_precision_finds_the_same_lungs(model, tmp_path):
    """precision="bfloat16" (autocast around LiteMedSAM; the head stays float32): on the demo
    radiograph the lungs' presence and masks stay those of float32."""
    from PIL import Image

    from medsam3.pipeline.demo import build_demo

    img = np.asarray(Image.open(build_demo(tmp_path).parent / "data" / "chest_xray.png"))
    half = load_model(backend="compact", precision="bfloat16")
    assert (model.precision, half.precision) == ("float32", "bfloat16")
    phrases = ["lung", "left lung"]
    full_out, half_out = model.segment(img, phrases, "xray"), half.segment(img, phrases, "xray")
    for p in phrases:
        assert abs(full_out[p].presence - half_out[p].presence) < 0.02, p
        a, b = full_out[p].mask > 0, half_out[p].mask > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95, p
    with pytest.raises(ValueError, match="feature cache"):
        load_model(backend="compact", precision="bfloat16", feature_cache=True)


def test_a_phrase_in_another_language_runs_and_is_flagged(model, tmp_path, caplog):
    """Documented behaviour: phrases are not translated; an unknown one still runs, is logged
    with its nearest known concepts, and the summary names them."""
    from medsam3.pipeline.demo import build_demo
    from medsam3.pipeline.segment_file import segment_file

    xray = build_demo(tmp_path).parent / "data" / "chest_xray.png"
    with caplog.at_level("WARNING", logger="medsam3.models.concepts"):
        summary = segment_file(xray, ["poumon", "lung"], tmp_path / "out", model)
    assert (tmp_path / "out" / "poumon.png").is_file()
    assert len(summary["concepts"]["poumon"]["nearest_known"]) == 3
    assert summary["concepts"]["lung"]["nearest_known"] == []
    flagged = [r.getMessage() for r in caplog.records if "not in the vocabulary" in r.getMessage()]
    assert len(flagged) == 1 and "'poumon'" in flagged[0]


def test_segment_file_on_a_video_writes_frames_and_names_their_folder(model, tmp_path):
    """``medsam3 segment`` on a video: one PNG per frame, and the summary names the folder."""
    from medsam3.pipeline.demo import build_demo
    from medsam3.pipeline.segment_file import segment_file

    video = build_demo(tmp_path).parent / "data" / "echo_clip.mp4"
    summary = segment_file(video, ["left ventricle"], tmp_path / "out", model)
    assert summary["input_kind"] == "video"
    assert summary["concepts"]["left ventricle"]["files"] == ["left_ventricle"]
    frames = sorted((tmp_path / "out" / "left_ventricle").glob("frame_*.png"))
    assert frames[0].name == "frame_0000.png" and len(frames) == 8
    assert (tmp_path / "out" / "left_ventricle" / "mask.nii.gz").is_file()


def test_bilateral_midline_needs_one_organ_on_each_side():
    from medsam3.models.compact import bilateral_midline

    both = np.zeros((40, 100), bool)
    both[5:35, 10:40] = both[5:35, 60:90] = True
    assert bilateral_midline(both) == pytest.approx(49.5)
    one = np.zeros_like(both)
    one[5:35, 10:40] = True
    assert bilateral_midline(one) is None, "a single organ has no midline to split at"
    one[20, 95] = True  # a speck on the other side is not an organ
    assert bilateral_midline(one) is None


@pytest.mark.shared_data
def test_left_and_right_lung_fall_on_the_patients_sides(model, shared_data):
    from PIL import Image

    img = np.asarray(Image.open(shared_data / "images/jsrt_hybridgnet/jsrt_jpcln058.png"))
    res = model.segment(img, ["left lung", "right lung"], modality="xray")
    for side in ("left", "right"):
        mask = shared_data / f"masks/jsrt_hybridgnet/jsrt_jpcln058__{side}_lung.png"
        gt = np.asarray(Image.open(mask)) > 127
        pred = res[f"{side} lung"].mask.astype(bool)
        assert 2 * (pred & gt).sum() / (pred.sum() + gt.sum()) > 0.9, side
    left, right = res["left lung"].mask.astype(bool), res["right lung"].mask.astype(bool)
    assert not (left & right).any()
    # radiological orientation: the patient's left lung is on the image's right
    assert np.flatnonzero(left.any(0)).mean() > np.flatnonzero(right.any(0)).mean()


def test_tile_grid_covers_the_image_with_overlapping_tiles():
    from medsam3.models.compact import tile_grid
    from medsam3.models.concepts import tiles_of

    tiles = tile_grid((584, 565), 2, 0.6)
    assert len(tiles) == 4
    covered = np.zeros((584, 565), int)
    for sl in tiles:
        covered[sl] += 1
        assert covered[sl].shape == (350, 339)
    assert covered.min() == 1 and covered.max() == 4  # every pixel, the centre four times
    assert tiles_of("retinal vessels") == 2 and tiles_of("polyp") == tiles_of("zorbly") == 1


@pytest.mark.shared_data
def test_thin_vessels_gain_from_tiles(model, shared_data):
    from PIL import Image

    img = np.asarray(Image.open(shared_data / "images/drive/drive_training_27.png").convert("RGB"))
    gt = np.asarray(Image.open(shared_data / "masks/drive/drive_training_27__retinal_vessel.png"))
    gt = (gt[..., 0] if gt.ndim == 3 else gt) > 127

    def dice(mask) -> float:
        return 2 * (mask.astype(bool) & gt).sum() / (mask.astype(bool).sum() + gt.sum())

    whole = model.segment_plane(img, ["retinal vessel"], "fundus")["retinal vessel"]
    tiled = model.segment(img, ["retinal vessel"], "fundus")["retinal vessel"]
    assert tiled.extra["tiles"] == 4 and "tiles" not in whole.extra
    assert (tiled.mask >= whole.mask).all(), "tiles only add vessel pixels"
    # head v4.1: 0.384 -> 0.399; v4 (mask cut at 0): 0.152 -> 0.276; v3: ~0.03; the head
    # before v3: 0.615 -> 0.676
    assert dice(tiled.mask) > dice(whole.mask) and dice(tiled.mask) > 0.35
    boxes = {"retinal vessel": [(0, 0, 99, 99)]}
    box = model.segment(img, ["retinal vessel"], "fundus", boxes=boxes)
    assert "tiles" not in box["retinal vessel"].extra, "a prompted concept is never tiled"


def test_auto_device_picks_the_gpu_of_a_gpu_node_and_refuses_what_it_cannot_use(monkeypatch):
    """``device: auto`` runs both backends on CUDA where torch sees a GPU; a CUDA request on a
    machine without one, or an unknown device, fails before anything loads."""
    from medsam3.models.build import resolve_device, uses_gpu
    from medsam3.pipeline.infer import _model_kwargs
    from medsam3.pipeline.settings import ModelSettings

    assert uses_gpu("compact", "auto") and not uses_gpu("compact", "cpu")
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU node
        assert _model_kwargs(ModelSettings("compact", "", "", "auto"))["device"] == "cuda"
        assert resolve_device("compact", None) == resolve_device("sam3", "auto") == "cuda"
        assert resolve_device("compact", "cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("compact", "auto") == "cpu"
        with pytest.raises(InputError, match="sees no CUDA GPU"):
            load_model(backend="compact", device="cuda:0")
    with pytest.raises(InputError, match="cpu or cuda"):
        load_model(backend="compact", device="tpu")


def test_batched_encoding_matches_one_plane_at_a_time(model, monkeypatch):
    """Volumes go through the encoder in batches (as on a GPU); presence and masks are those
    of one encoder pass per plane, and an out-of-memory error halves the batch."""
    from nilearn.datasets import load_mni152_template

    from medsam3.models.preprocess import to_uint8_rgb

    vol = load_mni152_template(resolution=2).get_fdata().astype(np.float32)
    span = (0.0, float(vol.max()))
    rgbs = [to_uint8_rgb(np.rot90(vol[:, :, z]), "mri", intensity_range=span) for z in (30, 45, 60)]
    one = [model.encode_plane(rgb, "mri") for rgb in rgbs]
    real = model._encode_batch
    sizes = []

    def tight_memory(preps):  # a device that fits two planes per pass
        sizes.append(len(preps))
        if len(preps) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return real(preps)

    monkeypatch.setattr(model, "_encode_batch", tight_memory)
    model.encode_batch = 4
    batched = model.encode_planes(rgbs, "mri")
    assert sizes == [3, 2, 1] and model.encode_batch == 2  # remembered for the next volume
    model.encode_batch = None
    for a, b in zip(one, batched, strict=True):
        torch.testing.assert_close(a.embedding, b.embedding, atol=1e-3, rtol=1e-3)
        pa, da = model.detect(a, ["brain"])
        pb, db = model.detect(b, ["brain"])
        assert abs(pa[0] - pb[0]) < 1e-3
        ma, mb = model.refine(a, da[0], "brain"), model.refine(b, db[0], "brain")
        assert 2 * (ma & mb).sum() / (ma.sum() + mb.sum()) >= 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_gpu_agree(model, tmp_path):
    """Same head and images on the CPU and on CUDA: presence within 1e-3, mask Dice >= 0.99
    (2D images, and a volume through propagation)."""
    import SimpleITK as sitk
    from PIL import Image

    from medsam3.pipeline.demo import build_demo

    data = build_demo(tmp_path).parent / "data"
    gpu = load_model(backend="compact", device="cuda")
    cases = [
        (np.asarray(Image.open(data / "chest_xray.png")), ["lung", "heart"], "xray"),
        (sitk.GetArrayFromImage(sitk.ReadImage(data / "mni152_t1.nii.gz")), ["brain"], "mri"),
    ]
    for image, phrases, modality in cases:
        cpu_out = model.segment(image, phrases, modality)
        gpu_out = gpu.segment(image, phrases, modality)
        for p in phrases:
            assert abs(cpu_out[p].presence - gpu_out[p].presence) < 1e-3, p
            a, b = cpu_out[p].mask > 0, gpu_out[p].mask > 0
            assert 2 * (a & b).sum() / max(1, a.sum() + b.sum()) >= 0.99 or not (a.any() or b.any())


def test_synonyms_and_spelling_variants_give_the_concepts_mask(model, tmp_path):
    from PIL import Image

    from medsam3.pipeline.demo import build_demo

    img = np.asarray(Image.open(build_demo(tmp_path).parent / "data" / "chest_xray.png"))
    phrases = ["lung", "lungs", "Lung Fields", "lugn"]
    res = model.segment(img, phrases, modality="xray")
    assert res["lung"].mask.any()
    for p in phrases[1:]:
        assert res[p].concept == p and res[p].extra["read_as"] == "lung"
        np.testing.assert_array_equal(res[p].mask, res["lung"].mask)
        assert res[p].presence == res["lung"].presence and res[p].nearest_known == []


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known regression of head v3 (docs/model_card.md, Known limits): pydicom's 128 px"
        " CT_small in HU is recognised as xray (0.59); the pipeline reads the modality "
        "from DICOM first"
    ),
)
def test_the_modality_of_real_images_is_recognised(model, mri_slice, tmp_path):
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    from medsam3.pipeline.demo import build_demo

    xray = np.asarray(Image.open(build_demo(tmp_path).parent / "data" / "chest_xray.png"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for array, modality in ((xray, "xray"), (mri_slice, "mri"), (ct, "ct")):
        guess = model.recognise_modality(array)
        assert guess.modality == modality and 0.5 < guess.confidence <= 1.0, guess


def test_presence_is_calibrated_per_modality(model):
    logits = torch.tensor([-2.0, 0.0, 2.0])
    plain = torch.sigmoid(logits).numpy()
    assert set(model.calibration) >= {"default", "ct", "mri"}
    for modality in ("ct", "dermoscopy", None):
        probs = model.presence(logits, modality)
        assert np.all(np.diff(probs) > 0), "calibration keeps the order of the scores"
    assert not np.allclose(model.presence(logits, "ct"), plain)
    np.testing.assert_array_equal(
        model.presence(logits, "no such modality"), model.presence(logits, None)
    )
