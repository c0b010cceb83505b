"""medsam3: text-promptable medical concept segmentation over imaging cohorts.

The public API: :func:`load_model` returns a segmenter whose ``segment`` method takes a numpy
array and concept phrases. The layers of the package are described in ``docs/architecture.md``.
"""

from __future__ import annotations

from medsam3._version import __version__
from medsam3.agent.config import AgentConfig
from medsam3.models import build
from medsam3.models.base import Segmenter

__all__ = ["AgentConfig", "__version__", "load_model"]


def load_model(
    backend: str = "compact",
    checkpoint: str | None = None,
    agent: str | dict | AgentConfig | None = None,
    **kwargs,
) -> Segmenter:
    """Build a segmenter, optionally wrapped with the agent (docs/agent.md).

    Args:
        backend: "compact" (the default) or "sam3"; see :func:`medsam3.models.build.load_model`.
        checkpoint: backend checkpoint path; None uses the compact head shipped with medsam3.
        agent: None or "off" (the backend alone), "rules" (offline critic + planner), "mllm"
            (an OpenAI-compatible endpoint picks the fixes), or an :class:`AgentConfig`.
        **kwargs: backend options (device, lora adapter path, ...).

    Returns:
        A Segmenter: its ``segment`` results carry ``critic_score``, ``agent_rounds``,
        ``review`` and ``agent_trace`` in ``extra`` when the agent is on.
    """
    model = build.load_model(backend, checkpoint=checkpoint, **kwargs)
    if AgentConfig.from_value(agent) is None:
        return model
    from medsam3.agent.segmenter import wrap  # imports torch: only when an agent is asked for

    return wrap(model, agent)
