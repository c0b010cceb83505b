"""Shared type aliases and small records used across medsam3.

Axis conventions (used everywhere in the package):
- arrays are in SimpleITK's voxel order as read from the source:
  image (y, x) or (y, x, c); volume (z, y, x); video (t, y, x) or (t, y, x, c).
- ``spacing``, ``origin`` and ``direction`` are in SimpleITK's (x, y, z) convention (LPS world
  frame for DICOM-derived data); ``direction`` is the flattened row-major direction cosine matrix.
- boxes are (x0, y0, x1, y1) in pixel coordinates (x1/y1 exclusive) for 2D, and
  (x0, y0, z0, x1, y1, z1) for volumes / videos (z = slice or frame index).
"""

from __future__ import annotations

from os import PathLike
from typing import Literal

import numpy as np

Kind = Literal["image", "volume", "video"]
KINDS: tuple[str, ...] = ("image", "volume", "video")
PathLikeStr = str | PathLike[str]
Array = np.ndarray
Box2D = tuple[float, float, float, float]
Point2D = tuple[float, float]
