"""Label encoding of segmentation results: the one instance definition, union preserved."""

from __future__ import annotations

import numpy as np

from medsam3.models.base import ConceptResult, Instance


def test_a_results_label_keeps_the_union_and_scores_every_instance():
    union = np.zeros((8, 8), np.uint8)
    union[1:3, 1:3] = union[5:7, 5:7] = 1
    first = np.zeros((8, 8), bool)
    first[1:3, 1:3] = True
    second = union.astype(bool) & ~first
    tiled = ConceptResult(
        "x", union, 0.9, [Instance(first, (1, 1, 3, 3), 0.9), Instance(second, (5, 5, 7, 7), 0.8)]
    )
    label, scores = tiled.instance_label()
    assert set(np.unique(label)) == {0, 1, 2} and scores == [0.9, 0.8]
    partial = ConceptResult("x", union, 0.6, [Instance(first, (1, 1, 3, 3), 0.9)] * 2)
    label, scores = partial.instance_label()
    np.testing.assert_array_equal(label > 0, union > 0)
    assert scores == [0.9, 0.6]  # components; the uncovered one scored by the presence
    many = np.zeros((40, 40), np.uint8)
    many[::2, ::2] = 1  # 400 isolated pixels: more than 255 instances, still ids
    label, scores = ConceptResult("x", many, 0.9, []).instance_label()
    assert label.max() == 400 and np.array_equal(label > 0, many > 0) and len(scores) == 400
