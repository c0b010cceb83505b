"""The concept vocabulary: lookup, synonyms and MiniLM nearest neighbours."""

from __future__ import annotations

import json
from importlib import resources

from medsam3.concepts import concept_names, get_concept, load_vocabulary, nearest, resolve


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


def test_shipped_head_lists_the_vocabulary():
    info = json.loads(
        resources.files("medsam3").joinpath("weights/compact_head.json").read_text(encoding="utf-8")
    )
    assert info["concepts"] == concept_names()
    assert len(info["sha256"]) == 64
