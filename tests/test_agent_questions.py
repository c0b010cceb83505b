"""Clinical questions planned offline into concepts and answers (vocabulary + MiniLM)."""

from __future__ import annotations

from medsam3.agent.questions import answer_question, plan_question
from medsam3.models.concepts import resolve


def test_vocabulary_names_synonyms_and_plurals():
    assert plan_question("is there a polyp?").concepts == ("polyp",)
    assert plan_question("Any liver tumour here?").concepts == ("liver tumor",)
    assert plan_question("Is the fetal skull visible?").concepts == ("fetal head",)
    assert plan_question("measure the kidneys").concepts == ("kidney",)
    liver_and_tumour = plan_question("measure the liver and the liver tumor").concepts
    assert liver_and_tumour == ("liver", "liver tumor")  # longest match first, in text order


def test_sides_pick_lateral_concepts():
    assert plan_question("measure both kidneys").concepts == ("left kidney", "right kidney")
    assert plan_question("how large is the left lung").concepts == ("left lung",)
    assert plan_question("is the right kidney there?").concepts == ("right kidney",)


def test_the_answer_rule_follows_the_wording():
    assert plan_question("is there a polyp?").answer == "presence"
    assert plan_question("measure both kidneys").answer == "size"
    assert plan_question("segment the liver").answer == "segment"


def test_unknown_words_go_to_the_nearest_concept_or_nowhere():
    plan = plan_question("is there a mole on the skin?")
    assert plan.matched == "nearest" and resolve(plan.concepts[0]) == plan.concepts[0]
    nothing = plan_question("what is the weather like")
    assert nothing.concepts == () and nothing.matched == "none"
    assert answer_question(nothing, {}).startswith("unanswered")


def test_answers_from_concept_rows():
    rows = {
        "left kidney": {"voxels": 1200, "volume_ml": 152.34, "presence": 0.9},
        "right kidney": {"voxels": 900, "area_mm2": None, "area_px": 900, "review": True},
        "polyp": {"voxels": 0, "presence": 0.12, "n_instances": 0},
    }
    sizes = answer_question(plan_question("measure both kidneys"), rows)
    assert sizes == "left kidney 152.3 ml; right kidney 900 pixels (flagged for review)"
    assert answer_question(plan_question("is there a polyp?"), rows).startswith(
        "no: polyp not found"
    )
    rows["polyp"] |= {"voxels": 50, "presence": 0.93, "n_instances": 2}
    yes = answer_question(plan_question("is there a polyp?"), rows)
    assert yes == "yes: polyp found (presence 0.93, 2 instances)"
    assert "liver not segmented" in answer_question(plan_question("measure the liver"), {})
