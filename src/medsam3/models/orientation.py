"""Display order: the in-plane orientation the models see, whatever order a volume is stored in.

A NIfTI written by nibabel is often stored RAS (columns run to the patient's right, rows to
anterior), DeepLesion's are stored transposed, DICOM series are LPS. Shown as stored, one is
upside down and mirrored, another turned by 90 degrees. The models were trained on slices in
radiological display, so volumes are segmented in that order and the masks mapped back:

- axial slices: anterior at the top, the patient's left on the image's right;
- coronal slices: superior at the top, the patient's left on the image's right;
- sagittal slices: superior at the top, anterior on the left.

Only the two in-plane axes are flipped or swapped; the slice axis, and so the resolution of each
slice, is kept. Both steps are exact (no resampling), so a mask mapped back lies on the stored
voxel grid and keeps the input's geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from medsam3.io.image import MedImage
from medsam3.models.base import ConceptResult, Segmenter, mask_box

log = logging.getLogger("medsam3.models.orientation")

# world axes in SimpleITK's LPS frame: 0 = L(eft), 1 = P(osterior), 2 = S(uperior)
# slice normal -> ((world axis, sign) that rows run along, (world axis, sign) columns run along)
_TARGETS = {
    2: ((1, 1), (0, 1)),  # axial: rows to posterior, columns to the patient's left
    1: ((2, -1), (0, 1)),  # coronal: rows to inferior, columns to the patient's left
    0: ((2, -1), (1, 1)),  # sagittal: rows to inferior, columns to posterior
}


@dataclass(frozen=True)
class DisplayOrder:
    """How a stored (z, y, x) array becomes display order: swap y/x, then flip rows / columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        """True when the stored order already is the display order."""
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """(z, y, x, ...) stored array -> display order (a view where possible)."""
        out = np.swapaxes(array, 1, 2) if self.transpose else array
        if self.flip_rows:
            out = out[:, ::-1]
        if self.flip_cols:
            out = out[:, :, ::-1]
        return out

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """Display-order array -> the stored order (the inverse of :meth:`to_display`)."""
        out = array[:, :, ::-1] if self.flip_cols else array
        if self.flip_rows:
            out = out[:, ::-1]
        return np.ascontiguousarray(np.swapaxes(out, 1, 2) if self.transpose else out)

    def spacing(self, spacing: tuple[float, ...] | None) -> tuple[float, ...] | None:
        """SimpleITK (x, y, z) spacing of the display-order array."""
        if spacing is None or not self.transpose:
            return spacing
        return (spacing[1], spacing[0], *spacing[2:])


def display_order(direction: tuple[float, ...] | None) -> DisplayOrder:
    """The display order of a volume with this SimpleITK direction (9 floats, row-major).

    Args:
        direction: direction cosines; None, 2D (4 floats) or an identity give no change.

    Returns:
        The DisplayOrder; oblique volumes use the nearest world axis of each index axis.
    """
    if direction is None or len(direction) != 9:
        return DisplayOrder()
    cosines = np.asarray(direction, float).reshape(3, 3)  # [world axis, index axis]
    world = np.abs(cosines).argmax(axis=0)  # world axis nearest to index axes x, y, z
    if len(set(world.tolist())) != 3:
        log.warning("direction %s is too oblique to name a plane: volume kept as stored", direction)
        return DisplayOrder()
    sign = np.sign(cosines[world, [0, 1, 2]])
    (row_axis, row_sign), (col_axis, col_sign) = _TARGETS[int(world[2])]
    rows_from_x = int(world[0]) == row_axis  # index x runs along the rows' world axis: swap
    row_index, col_index = (0, 1) if rows_from_x else (1, 0)
    return DisplayOrder(
        transpose=rows_from_x,
        flip_rows=bool(sign[row_index] != row_sign),
        flip_cols=bool(sign[col_index] != col_sign),
    )


def segment_in_display_order(
    model: Segmenter, image: MedImage, concepts: list[str], **kw
) -> dict[str, ConceptResult]:
    """``model.segment`` on a MedImage, volumes in display order, masks back in stored order.

    Args:
        model: a loaded :class:`medsam3.models.base.Segmenter`.
        image: :class:`medsam3.io.image.MedImage` (images and videos pass through unchanged).
        concepts: phrases.
        **kw: further ``segment`` options (boxes, points).

    Returns:
        Mapping phrase -> ConceptResult on the stored voxel grid; a volume's result records the
        order it was segmented in as ``extra["display_order"]``.
    """
    order = display_order(image.direction) if image.kind == "volume" else DisplayOrder()
    results = model.segment(
        order.to_display(image.array),
        concepts,
        modality=image.modality,
        spacing=order.spacing(image.spacing),
        kind=image.kind,
        **kw,
    )
    if image.kind != "volume":
        return results
    for result in results.values():
        _to_stored(result, order)
    return results


def _to_stored(result: ConceptResult, order: DisplayOrder) -> None:
    """Map a volume's ConceptResult back to the stored order, in place."""
    map_masks(result, order.to_stored)
    result.extra["display_order"] = asdict(order)


def map_masks(result: ConceptResult, back: Callable[[np.ndarray], np.ndarray]) -> None:
    """Apply ``back`` to a result's union, its instances (boxes recomputed) and any
    mask-shaped array in ``extra`` (such as a wrapper's raw mask), in place."""
    shape = result.mask.shape
    for key, value in result.extra.items():
        if isinstance(value, np.ndarray) and value.shape == shape:
            result.extra[key] = back(value)
    result.mask = back(result.mask)
    for inst in result.instances:
        inst.mask = back(inst.mask)
        inst.box = mask_box(inst.mask) if inst.mask.any() else inst.box
