"""Label encoding of segmentation results (uint8 instance ids, union preserved)."""

from __future__ import annotations


def test_instance_label_always_keeps_the_union():
    import numpy as np

    from medsam3.models.base import ConceptResult, Instance
    from medsam3.pipeline.infer import instance_label

    union = np.zeros((8, 8), np.uint8)
    union[1:3, 1:3] = union[5:7, 5:7] = 1
    first = np.zeros((8, 8), bool)
    first[1:3, 1:3] = True
    tiled = ConceptResult(
        "x",
        union,
        0.9,
        [
            Instance(first, (1, 1, 3, 3), 0.9),
            Instance(union.astype(bool) & ~first, (5, 5, 7, 7), 0.8),
        ],
    )
    label, encoding = instance_label(tiled)
    assert encoding == "instances" and set(np.unique(label)) == {0, 1, 2}
    partial = ConceptResult("x", union, 0.9, [Instance(first, (1, 1, 3, 3), 0.9)] * 2)
    label, _ = instance_label(partial)
    np.testing.assert_array_equal(label > 0, union > 0)
    many = np.zeros((40, 40), np.uint8)
    many[::2, ::2] = 1  # 400 isolated pixels: more than 255 components
    label, encoding = instance_label(ConceptResult("x", many, 0.9, []))
    assert encoding == "binary" and np.array_equal(label, many)
