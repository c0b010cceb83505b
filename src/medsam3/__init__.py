"""medsam3: text-promptable medical concept segmentation over imaging cohorts.

The public API: :func:`load_model` returns a segmenter whose ``segment`` method takes a numpy
array and concept phrases. The layers of the package are described in ``docs/architecture.md``.
"""

from __future__ import annotations

from medsam3._version import __version__
from medsam3.models.build import load_model

__all__ = ["__version__", "load_model"]
