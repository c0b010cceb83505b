"""The concept vocabulary: lookup, synonyms and MiniLM nearest neighbours."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from medsam3.models.concepts import (
    concept_names,
    get_concept,
    load_vocabulary,
    nearest,
    parent_of,
    resolve,
    unknown_phrase_warning,
)


def test_vocabulary_entries_are_complete():
    vocab = load_vocabulary()
    assert len(vocab) > 50
    names = [c.concept for c in vocab]
    assert len(names) == len(set(names)) and names == sorted(names)
    for c in vocab:
        assert c.concept == c.concept.lower().strip()
        assert c.modality and c.body_part


def test_resolve_names_and_synonyms():
    assert resolve("Fetal  Head") == "fetal head"
    assert resolve("leukocyte") == "white blood cell"
    assert resolve("retinal_vessel") == "retinal vessel"
    assert resolve("glioma") == "brain tumor"
    assert resolve("a purple elephant") is None
    assert get_concept("wbc").modality == ("microscopy",)


def test_nearest_uses_meaning_not_spelling():
    near = nearest("baby skull on a sonogram", k=3)
    assert len(near) == 3 and near[0][1] >= near[1][1] >= near[2][1]
    assert "fetal head" in [c for c, _ in near]
    assert "lung" in nearest("pulmonary lobes", k=1)[0][0]
    assert nearest("tumour of the liver", k=1)[0][0] == "liver tumor"
    assert all(-1.0 <= s <= 1.0 for _, s in near)


def test_phrases_outside_the_vocabulary_are_flagged_with_their_nearest_concepts():
    assert unknown_phrase_warning("liver") is None
    assert unknown_phrase_warning("Leukocyte") is None  # a synonym is known
    warning = unknown_phrase_warning("Leber")  # German for liver: MiniLM is English-only
    assert "'Leber' is not in the vocabulary" in warning and "not translated" in warning
    near = [c for c, _ in nearest("Leber", k=3)]
    assert all(c in warning for c in near)


def test_shipped_head_lists_the_vocabulary():
    info = json.loads(
        resources.files("medsam3").joinpath("weights/compact_head.json").read_text(encoding="utf-8")
    )
    assert info["concepts"] == concept_names()
    assert len(info["sha256"]) == 64


def test_subtypes_name_their_parent_in_the_vocabulary():
    names = set(concept_names())
    parents = {c.concept: c.parent for c in load_vocabulary() if c.parent}
    assert parents["neoplastic polyp"] == "polyp"
    assert parents["posterior hippocampus"] == "hippocampus"
    assert all(p in names and p != c for c, p in parents.items())
    assert parent_of("Neoplastic Polyp") == "polyp" and parent_of("polyp") is None
    assert parent_of("a purple elephant") is None


def test_conditioning_blends_a_subtype_with_its_parent():
    from medsam3.models.phrases import condition
    from medsam3.models.text_encoder import shared_text_encoder

    enc = shared_text_encoder()
    own, parent, unknown = enc.encode(["posterior hippocampus", "hippocampus", "zebra stripes"])
    blended, same = condition(["posterior hippocampus", "zebra stripes"])
    assert np.isclose(np.linalg.norm(blended), 1.0, atol=1e-5)
    assert blended @ parent > own @ parent  # pulled towards the parent concept
    assert blended @ own > 0.9
    np.testing.assert_allclose(same, unknown, atol=1e-6)  # no parent: the phrase's own vector


def test_synonyms_and_near_misses_condition_like_their_concept():
    from medsam3.models.phrases import condition

    vectors = condition(["polyp", "Colon Polyp", "polyps", "lung", "lugn", "leber"])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[3], vectors[4])
    assert vectors[5] @ vectors[3] < 0.99, "a phrase that names no concept keeps its own vector"


def test_spelling_correction_needs_one_unambiguous_concept(caplog):
    from medsam3.models.phrases import canonical, correct_spelling, edit_distance

    assert edit_distance("lugn", "lung", 1) == 1  # one swap of neighbours
    assert edit_distance("kidny", "kidney", 1) == 1
    assert edit_distance("spleen", "liver", 2) == 3  # stops early, beyond the limit
    assert correct_spelling("pancraes") == "pancreas"
    assert correct_spelling("left kidnye") == "left kidney"
    assert correct_spelling("l6 vertebra") is None, "one edit from every lumbar vertebra"
    assert correct_spelling("leber") is None and correct_spelling("lun") is None
    with caplog.at_level("WARNING", logger="medsam3.phrases"):
        assert canonical("brest tumor") == "breast tumor"
    assert "near-miss spelling" in caplog.text
    assert canonical("optic disk") == "optic disc" and canonical("zebra stripes") is None


def test_concepts_command_lists_every_concept_with_its_parent(capsys):
    from medsam3.cli import main

    assert main(["concepts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["concept", "body"]
    assert len(lines) == len(concept_names()) + 1
    polyp = next(line for line in lines if line.startswith("neoplastic polyp "))
    assert " polyp " in polyp[len("neoplastic polyp") :] and "endoscopy" in polyp


def test_lateral_pair_names_the_side_of_a_paired_organ():
    from medsam3.models.concepts import lateral_pair

    assert lateral_pair("left kidney") == ("left", "kidney")
    assert lateral_pair("Right_Lung") == ("right", "lung")
    assert lateral_pair("left atrium") is None, "there is no 'atrium' to split"
    assert lateral_pair("left lung upper lobe") is None
    assert lateral_pair("kidney") is None and lateral_pair("zorbly gizmo") is None
