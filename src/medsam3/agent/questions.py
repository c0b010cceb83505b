"""Clinical questions (MedSeg-R style) planned offline into concepts and an answer rule.

"is there a polyp?" -> segment ``polyp``, answer presence; "measure both kidneys" -> segment
``left kidney`` and ``right kidney``, answer their sizes. Concepts are the vocabulary names and
synonyms found in the question (longest first, plurals folded), else the MiniLM-nearest
vocabulary concept; "both", "left" and "right" pick the lateral concepts of a paired organ.
Answers are built from segments rows (the pipeline's concept rows, or ``medsam3 segment``'s
summary entries), so nothing here runs a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medsam3.models.concepts import load_vocabulary, nearest, resolve

PRESENCE_CUES = ("is there", "are there", "any ", "present", "does ", "do we see", "detect")
SIZE_CUES = ("measure", "how large", "how big", "size", "volume", "area", "extent")
MIN_SIMILARITY = 0.3  # below it the nearest concept is not taken as the question's subject


@dataclass(frozen=True)
class QuestionPlan:
    """What a question asks for.

    Attributes:
        question: the question as given.
        concepts: vocabulary concepts to segment.
        answer: "presence", "size" or "segment".
        matched: "vocabulary" (names/synonyms in the text), "nearest" (MiniLM) or "none".
    """

    question: str
    concepts: tuple[str, ...]
    answer: str
    matched: str


def _norm(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9\- ]", " ", text.lower()).split()) + " "


def _names() -> list[tuple[str, str]]:
    """(phrase, canonical concept) for every name and synonym, longest phrase first."""
    pairs = [(c.concept, c.concept) for c in load_vocabulary()]
    pairs += [(s.lower(), c.concept) for c in load_vocabulary() for s in c.synonyms]
    return sorted(set(pairs), key=lambda p: (-len(p[0]), p[0]))


def _singular(text: str) -> str:
    """Plurals folded word by word ("kidneys" -> "kidney", "lungs" -> "lung")."""
    words = [
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in text.split()
    ]
    return " " + " ".join(words) + " "


def vocabulary_matches(question: str) -> list[str]:
    """Vocabulary concepts named in a question, in order of appearance, longest match first."""
    text, found = _norm(question), []
    for variant in (text, _singular(text)):
        taken = variant
        for phrase, concept in _names():
            pos = taken.find(f" {phrase} ")
            if pos >= 0:
                found.append((pos, concept))
                taken = taken[:pos] + " " + "#" * len(phrase) + " " + taken[pos + len(phrase) + 2 :]
        if found:
            break
    return list(dict.fromkeys(c for _, c in sorted(found)))


def _lateral(concepts: list[str], text: str) -> list[str]:
    """ "both" / "left" / "right" applied to paired organs ("both kidneys" -> left and right)."""
    sides = [s for s in ("left", "right") if f" {s} " in text]
    if " both " in text or " bilateral " in text:
        sides = ["left", "right"]
    out = []
    for concept in concepts:
        lateral = [f"{s} {concept}" for s in sides if resolve(f"{s} {concept}")]
        out += lateral or [concept]
    return list(dict.fromkeys(out))


def plan_question(question: str) -> QuestionPlan:
    """Plan a question into concepts and an answer rule.

    Args:
        question: free text, e.g. "is there a polyp?" or "measure both kidneys".

    Returns:
        The plan (no concepts and matched "none" when nothing fits).
    """
    text = _norm(question)
    answer = "segment"
    if any(cue in text for cue in SIZE_CUES):
        answer = "size"
    elif any(cue in text for cue in PRESENCE_CUES) or question.strip().endswith("?"):
        answer = "presence"
    concepts, matched = vocabulary_matches(question), "vocabulary"
    if not concepts:
        best = nearest(question, k=1)
        concepts = [best[0][0]] if best and best[0][1] >= MIN_SIMILARITY else []
        matched = "nearest" if concepts else "none"
    return QuestionPlan(question, tuple(_lateral(concepts, text)), answer, matched)


def answer_question(plan: QuestionPlan, rows: dict[str, dict]) -> str:
    """The answer string from the concepts' segments rows.

    Args:
        plan: :func:`plan_question`'s plan.
        rows: concept -> its concept row (presence, n_instances, voxels, volume_ml, area_mm2,
            area_px, review; missing keys read as unknown).

    Returns:
        One line, e.g. "yes: polyp (presence 0.93, 2 instances)" or
        "left kidney 152.3 ml; right kidney 160.1 ml".
    """
    if not plan.concepts:
        return "unanswered: no known concept in the question"
    parts = [_answer_one(plan.answer, c, rows.get(c)) for c in plan.concepts]
    if plan.answer == "presence":
        found = [c for c in plan.concepts if (rows.get(c) or {}).get("voxels")]
        head = "yes" if found else "no"
        return f"{head}: " + "; ".join(parts)
    return "; ".join(parts)


def _answer_one(kind: str, concept: str, row: dict | None) -> str:
    if row is None:
        return f"{concept} not segmented"
    flag = " (flagged for review)" if row.get("review") else ""
    if kind == "presence":
        n = row.get("n_instances") or 0
        state = "found" if row.get("voxels") else "not found"
        return f"{concept} {state} (presence {row.get('presence', 0):.2f}, {n} instances){flag}"
    return f"{concept} {_size(row)}{flag}"


def _size(row: dict) -> str:
    """The size with its unit: ml, mm^2, else pixels / voxels."""
    if row.get("volume_ml") is not None:
        return f"{row['volume_ml']:.1f} ml"
    if row.get("area_mm2") is not None:
        return f"{row['area_mm2']:.0f} mm2"
    if row.get("area_px") is not None:
        return f"{row['area_px']} pixels"
    return f"{row.get('voxels') or 0} voxels"
