"""The upright step: which way up a 2D radiology image is, and segmenting it that way."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medsam3.models.orientation import DisplayOrder
from medsam3.models.preprocess import to_uint8_rgb
from medsam3.models.upright import (
    MIRROR,
    ORDERS,
    Upright,
    UprightNet,
    decide,
    load_upright,
    thumbnail,
    to_display,
)
from medsam3.training import fit_upright


def _index(order: DisplayOrder) -> int:
    return ORDERS.index(order)


UPSIDE_DOWN = _index(DisplayOrder(flip_rows=True))
TRANSPOSED = _index(DisplayOrder(transpose=True))


@pytest.fixture(scope="module")
def ct_rgb() -> np.ndarray:
    """pydicom's CT_small: an axial slice through a vertebra, anterior at the top."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return to_uint8_rgb(hu.astype(np.float32), "ct")


def _end(shown: np.ndarray, upright: np.ndarray, stored: np.ndarray) -> str:
    """How an image ended: "up", "mirror" (of up), "stored" (left as it was) or "wrong"."""
    same = lambda a, b: a.shape == b.shape and bool((a == b).all())  # noqa: E731
    if same(shown, upright):
        return "up"
    if same(shown, upright[:, ::-1]):
        return "mirror"
    return "stored" if same(shown, stored) else "wrong"


def test_decide_acts_only_on_a_confident_way_up():
    prob = np.zeros((5, 8))
    prob[0, UPSIDE_DOWN] = 0.97  # confident: turned
    prob[0, 0] = 0.03
    prob[1, UPSIDE_DOWN], prob[1, MIRROR[UPSIDE_DOWN]] = 0.5, 0.46  # sure of up, not of mirror
    prob[1, 0] = 0.04
    prob[2, UPSIDE_DOWN], prob[2, 0] = 0.6, 0.4  # not sure
    prob[3, MIRROR[0]], prob[3, 0] = 0.7, 0.3  # a mirror alone needs the confidence itself
    prob[4, MIRROR[0]], prob[4, 0] = 0.99, 0.01
    assert decide(prob, 0.95).tolist() == [UPSIDE_DOWN, UPSIDE_DOWN, 0, 0, MIRROR[0]]


def test_mirror_partners_show_mirror_images():
    image = np.arange(12).reshape(3, 4)
    for k, order in enumerate(ORDERS):
        shown = to_display(image, order)
        assert (to_display(image, ORDERS[MIRROR[k]]) == shown[:, ::-1]).all()


def test_net_scores_every_order_of_an_image_alike():
    """The logit of order k is the score of the image put in order k, so an image stored in
    any order is shown the same way up by the net's first choice."""
    torch.manual_seed(0)
    net = UprightNet().eval()
    image = np.random.default_rng(0).random((80, 80)).astype(np.float32)
    shown = []
    for k in range(len(ORDERS)):
        stored = fit_upright.stored_in(image, k)
        with torch.no_grad():
            logits = net(thumbnail(stored)[None])[0].numpy()
        shown.append(to_display(stored, ORDERS[int(logits.argmax())]))
    for other in shown[1:]:
        np.testing.assert_array_equal(other, shown[0])


def test_thumbnail_pads_symmetrically():
    image = np.random.default_rng(1).random((40, 64)).astype(np.float32)
    np.testing.assert_allclose(
        thumbnail(image[::-1])[0].numpy(), thumbnail(image)[0].numpy()[::-1], atol=1e-5
    )
    assert thumbnail(image).shape == (1, 64, 64)


def test_classifier_sees_which_way_up_a_real_ct_slice_is(ct_rgb):
    """Stored in any order, the packaged net's most probable way up shows the slice upright
    (or its mirror image: a vertebra is nearly symmetric); at its shipped confidence it leaves
    the slice as stored when unsure and never turns the upright slice."""
    upright = load_upright()
    assert upright.order_to_apply(ct_rgb)[0].identity
    sure = Upright(upright.net, min_confidence=0.5)
    for k in range(len(ORDERS)):
        stored = fit_upright.stored_in(ct_rgb, k)
        assert _end(to_display(stored, sure.order_to_apply(stored)[0]), ct_rgb, stored) in (
            "up",
            "mirror",
        )
        shipped = _end(to_display(stored, upright.order_to_apply(stored)[0]), ct_rgb, stored)
        assert shipped in ("up", "mirror", "stored"), f"order {k}"


def test_shipped_classifier_turns_real_chest_radiographs_back(shared_data):
    """Val chest radiographs (a source it was trained on, other patients) stored in every
    order: none ends the wrong way up, and most are put back."""
    from medsam3.training.data import build_samples

    samples = [s for s in build_samples(shared_data, ("val",)) if s.dataset.startswith("Shenzhen")]
    assert samples
    upright, ends = load_upright(), []
    for sample in samples:
        rgb = sample.load_rgb()
        for k in range(1, len(ORDERS)):
            stored = fit_upright.stored_in(rgb, k)
            ends.append(_end(to_display(stored, upright.order_to_apply(stored)[0]), rgb, stored))
    assert "wrong" not in ends, ends
    assert ends.count("up") + ends.count("mirror") >= 0.7 * len(ends), ends


def test_segmenting_a_turned_slice_maps_the_masks_back(ct_rgb):
    from medsam3 import load_model

    torch.set_num_threads(2)
    model = load_model(backend="compact")
    model.upright = Upright(model.upright.net, min_confidence=0.5)  # sure enough to turn it
    stored = fit_upright.stored_in(ct_rgb, TRANSPOSED)
    result = model.segment(stored, ["vertebra", "spinal cord"], modality="ct")
    facts = result["vertebra"].extra["upright"]
    assert facts["applied"]
    order = DisplayOrder(facts["transpose"], facts["flip_rows"], facts["flip_cols"])
    classifier, model.upright = model.upright, None
    try:
        reference = model.segment(to_display(stored, order), ["vertebra", "spinal cord"], "ct")
    finally:
        model.upright = classifier
    for phrase, ref in reference.items():
        expected = order.to_stored(ref.mask[None])[0]
        np.testing.assert_array_equal(result[phrase].mask, expected)
        assert result[phrase].mask.shape == stored.shape[:2]
        for inst in result[phrase].instances:
            assert inst.mask.shape == stored.shape[:2]
    assert (
        model.segment(stored, ["vertebra"], modality="dermoscopy")["vertebra"].extra.get("upright")
        is None
    ), "only CT, MRI and X-ray images are turned"


def test_training_learns_a_way_up_and_round_trips(tmp_path):
    """A few hundred steps on planes whose top is bright: the net learns where up is, and the
    saved classifier loads back with the same answers."""
    rng = np.random.default_rng(0)
    planes = []
    for _ in range(16):
        plane = rng.random((48, 40)).astype(np.float32) * 0.3
        plane[:8, : rng.integers(10, 30)] += 1.0  # a bright band at the top, from the left
        planes.append(plane)
    net, history = fit_upright.train(planes, ["synthetic"] * 16, planes[:4], steps=250)
    prob = fit_upright.probabilities(net, planes[:4])
    assert fit_upright.scores(prob, 0.5)["up"] >= 0.9, history
    path = tmp_path / "upright.safetensors"
    fit_upright.save(net, path, {"config": {}, "min_confidence": 0.5})
    loaded = load_upright(path)
    again = loaded.probabilities([fit_upright.stored_in(p, 3) for p in planes[:4]])
    np.testing.assert_allclose(again, prob[:, 3], atol=1e-5)


def test_the_agent_refines_a_turned_slice_the_right_way_up(ct_rgb):
    """With the agent on, base result and refinements are all computed on the upright view and
    mapped back together, as without the agent."""
    from medsam3 import load_model

    torch.set_num_threads(2)
    agent = load_model(backend="compact", agent="rules")
    agent.base.upright = Upright(agent.base.upright.net, min_confidence=0.5)
    stored = fit_upright.stored_in(ct_rgb, UPSIDE_DOWN)
    result = agent.segment(stored, ["vertebra"], modality="ct")["vertebra"]
    facts = result.extra["upright"]
    assert facts["applied"] and "critic_score" in result.extra
    order = DisplayOrder(facts["transpose"], facts["flip_rows"], facts["flip_cols"])
    classifier, agent.base.upright = agent.base.upright, None
    try:
        view = agent.segment(to_display(stored, order), ["vertebra"], modality="ct")["vertebra"]
    finally:
        agent.base.upright = classifier
    np.testing.assert_array_equal(result.mask, order.to_stored(view.mask[None])[0])
    assert result.extra["critic_score"] == view.extra["critic_score"]
