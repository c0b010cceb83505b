"""The concept vocabulary: canonical names, synonyms, modalities, body parts, nearest matches.

The vocabulary ships as ``medsam3/data/vocabulary.json``. Any phrase can be segmented (its MiniLM
embedding drives the compact head); the vocabulary only names what the head was trained on and
answers "which known concepts are closest to this phrase".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from medsam3.models.text_encoder import shared_text_encoder

log = logging.getLogger("medsam3.models.concepts")


@dataclass(frozen=True)
class Concept:
    """One vocabulary entry.

    Attributes:
        concept: canonical name (lower case).
        synonyms: alternative phrases that resolve to it.
        modality: modalities it was annotated in.
        body_part: main body part.
        parent: broader concept it is a kind or part of ("neoplastic polyp" -> "polyp"), or
            None. Set only for concepts with no training annotations of their own: the compact
            head is conditioned on the phrase and its parent together, so such a concept
            inherits what was learned for its parent (and cannot be told apart from it).
        tiles: for thin structures on 2D images, n > 1 also segments an n x n grid of
            overlapping tiles at a larger scale and adds their masks (compact backend).
    """

    concept: str
    synonyms: tuple[str, ...]
    modality: tuple[str, ...]
    body_part: str
    parent: str | None = None
    tiles: int = 1


# Body parts the shipped vocabulary still gets wrong (its JSON is the training run's; fixed here
# so `medsam3 concepts` and every reader of Concept.body_part agree): nuclei come from blood,
# colon and MoNuSeg's many organs; the autochthonous muscles are the back's; DeepLesion's
# lesions lie in the chest, abdomen and pelvis; a fetal head is the fetus's.
BODY_PART_FIXES = {
    "nucleus": "multi-organ",
    "left autochthonous muscle": "back",
    "right autochthonous muscle": "back",
    "lesion": "whole body",
    "fetal head": "fetus",
}


def _norm(phrase: str) -> str:
    return " ".join(phrase.lower().replace("_", " ").split())


@lru_cache(maxsize=1)
def load_vocabulary() -> tuple[Concept, ...]:
    """Read the shipped vocabulary.

    Returns:
        Concepts sorted by name.
    """
    text = resources.files("medsam3").joinpath("data/vocabulary.json").read_text(encoding="utf-8")
    return tuple(
        Concept(
            e["concept"],
            tuple(e["synonyms"]),
            tuple(e["modality"]),
            BODY_PART_FIXES.get(e["concept"], e["body_part"]),
            e.get("parent"),
            int(e.get("tiles", 1)),
        )
        for e in json.loads(text)["concepts"]
    )


@lru_cache(maxsize=1)
def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for c in load_vocabulary():
        table[_norm(c.concept)] = c.concept
        for s in c.synonyms:
            table.setdefault(_norm(s), c.concept)
    return table


def concept_names() -> list[str]:
    """Canonical concept names, sorted."""
    return [c.concept for c in load_vocabulary()]


def get_concept(name: str) -> Concept | None:
    """The vocabulary entry for a canonical name or synonym, or None."""
    canonical = resolve(name)
    return next((c for c in load_vocabulary() if c.concept == canonical), None)


def resolve(phrase: str) -> str | None:
    """Canonical concept for an exact name or synonym (case/whitespace/underscore-insensitive).

    Args:
        phrase: any phrase.

    Returns:
        The canonical name, or None for a phrase outside the vocabulary.
    """
    return _lookup().get(_norm(phrase))


def parent_of(phrase: str) -> str | None:
    """The vocabulary parent of a known phrase (name or synonym), else None."""
    concept = get_concept(phrase)
    return concept.parent if concept else None


def tiles_of(phrase: str) -> int:
    """Tile grid size of a known phrase for thin structures on 2D images (1: no tiling)."""
    concept = get_concept(phrase)
    return concept.tiles if concept else 1


def lateral_pair(phrase: str) -> tuple[str, str] | None:
    """Side and bilateral concept of a sided paired organ, else None.

    "left kidney" -> ("left", "kidney") because "kidney" is itself a vocabulary concept;
    "left atrium" -> None (there is no "atrium").
    """
    concept = get_concept(phrase)
    if concept is None:
        return None
    side, _, base = concept.concept.partition(" ")
    if side in ("left", "right") and resolve(base) == base:
        return side, base
    return None


@lru_cache(maxsize=1)
def _name_matrix() -> tuple[list[str], np.ndarray]:
    names, owners = [], []
    for c in load_vocabulary():
        for s in (c.concept, *c.synonyms):
            names.append(s)
            owners.append(c.concept)
    return owners, shared_text_encoder().encode(names)


def nearest(phrase: str, k: int = 3) -> list[tuple[str, float]]:
    """The k vocabulary concepts nearest to a phrase by MiniLM cosine similarity.

    A concept's similarity is the best over its name and synonyms.

    Args:
        phrase: any phrase.
        k: how many to return.

    Returns:
        [(canonical concept, cosine similarity in [-1, 1])], most similar first.
    """
    owners, matrix = _name_matrix()
    sims = matrix @ shared_text_encoder().encode([phrase])[0]
    best: dict[str, float] = {}
    for owner, s in zip(owners, sims, strict=True):
        best[owner] = max(best.get(owner, -1.0), float(s))
    return sorted(best.items(), key=lambda kv: -kv[1])[:k]


def unknown_phrase_warning(phrase: str) -> str | None:
    """A warning for a phrase outside the vocabulary naming its nearest known concepts, else None.

    Such a phrase still runs: its MiniLM embedding drives the head. MiniLM is an English
    encoder and phrases are not translated, so "Leber" is not "liver".
    """
    if resolve(phrase):
        return None
    near = ", ".join(f"{c} ({s:.2f})" for c, s in nearest(phrase, k=3))
    return (
        f"{phrase!r} is not in the vocabulary (`medsam3 concepts` lists it); it is segmented from "
        f"its English phrase embedding, nearest known: {near}. Phrases are not translated: "
        "give the English name."
    )


_WARNED: set[str] = set()


def log_unknown_phrases(phrases: list[str]) -> None:
    """Log each phrase outside the vocabulary once per process (CLI and pipeline jobs)."""
    for phrase in sorted(set(phrases) - _WARNED):
        _WARNED.add(phrase)
        if warning := unknown_phrase_warning(phrase):
            log.warning(warning)


def vocabulary_table() -> list[dict]:
    """Rows for ``medsam3 concepts``: concept, synonyms, modality, body_part, parent (strings)."""
    return [
        {
            "concept": c.concept,
            "synonyms": ", ".join(c.synonyms),
            "modality": ", ".join(c.modality),
            "body_part": c.body_part,
            "parent": c.parent or "",
        }
        for c in load_vocabulary()
    ]
