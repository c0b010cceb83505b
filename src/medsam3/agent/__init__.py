"""The segmentation agent: a critic scores each result, a planner proposes fixes, a loop keeps
the better one (offline rules by default; an OpenAI-compatible MLLM endpoint on request).

Layer: above models, training and reports, below the pipeline (docs/architecture.md). The
models never import it; :func:`medsam3.load_model` wraps a segmenter with
:func:`medsam3.agent.segmenter.wrap` when ``agent=`` is given.
"""

from __future__ import annotations

from medsam3.agent.config import AgentConfig

__all__ = ["AgentConfig"]
