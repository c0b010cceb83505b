"""The rules agent end to end with the real compact model on one real CT slice and a few
slices of a real MRI volume (shared data set; skipped without it).

Properties, not numbers: the agent never lowers the critic's score, a candidate is accepted
only when it scores higher, the base result is the agent-off result, runs repeat exactly, and
the rules mode opens no socket.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

import medsam3
from medsam3.agent.loop import TRACE_COLUMNS
from medsam3.agent.planner import (
    MAX_CROP_SHARE,
    Candidate,
    box_of,
    crop_around,
    crop_share,
    crop_zoom,
    drop_implausible,
    localise,
    reprompt,
    rethreshold,
)
from medsam3.agent.segmenter import AgentSegmenter
from medsam3.models.compact import CompactSegmenter
from medsam3.training.data import read_volume

CONCEPTS = ["liver", "liver tumor", "left kidney"]


@pytest.fixture(scope="module")
def agent():
    model = medsam3.load_model("compact", agent={"mode": "rules", "max_rounds": 2, "accept": 0.9})
    assert isinstance(model, AgentSegmenter) and isinstance(model.base, CompactSegmenter)
    return model


@pytest.fixture(scope="module")
def ct_slice(shared_data):
    path = shared_data / "images/liver_tumor_3d/liver_tumor_3d_10019_119.png"
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def results(agent, ct_slice):
    return agent.segment(ct_slice, CONCEPTS, modality="ct")


def test_results_carry_the_agents_fields(agent, results, ct_slice):
    assert list(results) == CONCEPTS
    for phrase, r in results.items():
        e = r.extra
        assert r.mask.shape == ct_slice.shape and r.mask.dtype == np.uint8
        assert 0.0 <= e["critic_score"] <= 1.0 and e["critic_score"] >= e["critic_raw"]
        assert e["review"] == (e["critic_score"] < agent.config.accept)
        assert 0 <= e["agent_rounds"] <= agent.config.max_rounds
        assert e["agent_encodings"] <= agent.config.max_encodings
        trace = e["agent_trace"]
        assert all(tuple(row) == TRACE_COLUMNS for row in trace)
        assert trace[-1]["action"] == "stop" and trace[-1]["concept"] == phrase
        assert "agent_raw_mask" in e or e["agent_action"] == "model"


def test_a_candidate_is_accepted_only_when_it_scores_higher(results):
    for r in results.values():
        trace = r.extra["agent_trace"]
        for row in trace:
            if row["decision"] == "accepted" and row["action"] != "stop":
                assert row["critic_after"] > row["critic_before"]
        replaced = [r for r in trace if r["decision"] == "accepted" and r["action"] != "stop"]
        rounds = [row["round"] for row in replaced]
        assert len(rounds) == len(set(rounds))  # at most one replacement per round


def test_the_raw_result_is_the_agent_off_result(agent, results, ct_slice):
    off = agent.base.segment(ct_slice, CONCEPTS, modality="ct")
    for phrase, r in results.items():
        raw = r.extra.get("agent_raw_mask", r.mask)
        assert np.array_equal(raw, off[phrase].mask)
        assert "critic_score" not in off[phrase].extra
    assert isinstance(medsam3.load_model("compact", agent="off"), CompactSegmenter)


def test_runs_repeat_and_open_no_socket(agent, results, ct_slice, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the rules agent opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    again = agent.segment(ct_slice, CONCEPTS, modality="ct")
    for phrase, r in results.items():
        assert again[phrase].extra["agent_trace"] == r.extra["agent_trace"]
        assert np.array_equal(again[phrase].mask, r.mask)


def test_prompted_concepts_are_left_alone(agent, ct_slice):
    box = {"liver": [[100, 100, 250, 250]]}
    r = agent.segment(ct_slice, ["liver"], modality="ct", boxes=box)["liver"]
    assert r.extra["prompt"] == "box" and "critic_score" not in r.extra


def test_every_plane_action_on_the_real_image(agent, results, ct_slice):
    liver = results["liver"].mask.astype(bool)
    ctx = agent._plane_context(
        "liver tumor", results["liver tumor"], ct_slice, {"liver": liver}, "ct"
    )
    current = Candidate(results["liver tumor"].mask.astype(bool), results["liver tumor"].presence)
    made = {
        "reprompt": reprompt(ctx, "hepatic tumor", current),
        "peak": localise(ctx, "peak", current),
        "prior": localise(ctx, "prior", current),
        "parent": localise(ctx, "parent", current),
        "relax": rethreshold(ctx, -1.5, current),
        "tighten": rethreshold(ctx, 1.5, current),
        "crop_zoom": crop_zoom(ctx, current),
    }
    for name, c in made.items():
        if c is None:
            assert name == "parent" and not liver.any()
            continue
        assert c.mask.shape == ct_slice.shape and c.mask.dtype == bool, name
        assert c.evidence.synonym_iou is not None, name
        if c.mask.any():  # the dense map's mean probability inside the mask
            assert 0.0 <= c.evidence.confidence <= 1.0, name
    assert made["crop_zoom"] is None or made["crop_zoom"].encodings == 1
    assert made["relax"].mask.sum() >= made["tighten"].mask.sum()
    # a tighter cut keeps the head's surer pixels: its dense confidence is higher
    assert made["tighten"].evidence.confidence > made["relax"].evidence.confidence


def test_crop_zoom_looks_closer_or_not_at_all(agent, results, ct_slice):
    ctx = agent._plane_context("liver", results["liver"], ct_slice, {}, "ct")
    small = np.zeros(ct_slice.shape, bool)
    small[200:260, 220:300] = True
    closer = crop_zoom(ctx, Candidate(small, 0.9))
    ys, xs = crop_around(box_of(small)[0].reshape(-1), ct_slice.shape)
    assert crop_share((ys, xs), ct_slice.shape) < MAX_CROP_SHARE
    assert closer.encodings == 1 and not closer.mask[: ys.start].any()
    assert not closer.mask[:, xs.stop :].any()  # pasted back inside its crop only
    whole = np.zeros(ct_slice.shape, bool)
    whole[5:-5, 5:-5] = True  # the crop would be the whole plane: nothing to zoom into
    assert crop_zoom(ctx, Candidate(whole, 0.9)) is None


def test_drop_removes_the_wrong_side_and_outside_parts(shared_data):
    base = "masks/liver_tumor_3d/liver_tumor_3d_10019_119__"
    liver = np.asarray(Image.open(shared_data / f"{base}liver.png")) > 127
    tumour = np.asarray(Image.open(shared_data / f"{base}liver_tumor.png")) > 127
    stray = tumour.copy()
    stray[:20, :20] = True  # a large component outside the liver
    dropped = drop_implausible("liver tumor", Candidate(stray, 0.9), {"liver": liver})
    assert dropped is not None and not dropped.mask[:20, :20].any()
    assert np.array_equal(dropped.mask & liver, tumour & liver)
    assert drop_implausible("liver tumor", Candidate(tumour, 0.9), {"liver": liver}) is None


def test_volumes_use_the_stack_actions(agent, shared_data):
    flair = read_volume(shared_data / "volumes/brats2015/brats_2013_pat0005/flair.nii.gz")
    label = read_volume(shared_data / "volumes/brats2015/brats_2013_pat0005/brain_tumor.nii.gz")
    z = int(np.argmax(label.reshape(len(label), -1).sum(1)))
    volume = flair[z - 1 : z + 2, ::2, ::2].astype(np.float32)
    r = agent.segment(volume, ["brain tumor"], modality="mri", kind="volume")["brain tumor"]
    assert r.mask.shape == volume.shape
    assert r.extra["critic_score"] >= r.extra["critic_raw"]
    actions = {row["action"] for row in r.extra["agent_trace"]}
    assert actions <= {"drop", "reprompt:glioma", "stop"} | {
        a for a in actions if a.startswith("reprompt:")
    }


def test_only_crop_and_zoom_encodes_again(agent, ct_slice, monkeypatch):
    calls = []
    encode = agent.base.sam.encode

    def counted(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(agent.base.sam, "encode", counted)
    agent.base.segment(ct_slice, CONCEPTS, modality="ct")
    off = len(calls)
    calls.clear()
    results = agent.segment(ct_slice, CONCEPTS, modality="ct")
    extra = sum(r.extra["agent_encodings"] for r in results.values())
    assert len(calls) == off + extra


def test_an_absent_concept_stays_absent_unless_configured(agent, ct_slice):
    """By default the agent scores a concept the model reported absent and keeps it empty (on
    val, drawing masks on absent concepts cost all of the presence MCC); refine_absent lets
    it search, and the loop then runs."""
    phrase = "polyp"  # a colonoscopy concept on an abdominal CT slice
    base = agent.base.segment(ct_slice, [phrase], modality="ct")[phrase]
    assert not base.mask.any()
    kept = agent.segment(ct_slice, [phrase], modality="ct")[phrase]
    assert not kept.mask.any() and kept.extra["agent_rounds"] == 0
    assert kept.extra["agent_action"] == "model" and kept.presence == base.presence
    searching = medsam3.load_model(
        "compact", agent={"mode": "rules", "max_rounds": 1, "accept": 1.0, "refine_absent": True}
    )
    tried = searching.segment(ct_slice, [phrase], modality="ct")[phrase]
    assert tried.extra["agent_rounds"] == 1
    assert len(tried.extra["agent_trace"]) > 1  # actions were tried
