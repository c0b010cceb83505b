"""The agent's settings: one frozen record, built from a mode name or the config's ``agent:``."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

MODES = ("off", "rules", "mllm")


@dataclass(frozen=True)
class AgentConfig:
    """How the agent runs.

    Attributes:
        mode: "off" (no agent), "rules" (offline critic + planner) or "mllm" (an
            OpenAI-compatible endpoint picks the actions; falls back to rules on failure).
        max_rounds: planner rounds per concept (each round tries every proposed action once).
        accept: critic score at or above which a result is accepted and the loop stops.
        max_encodings: extra image encodings per concept (crop-and-zoom, re-prompted volumes).
        endpoint: base URL of the MLLM server (``http://127.0.0.1:8000/v1``).
        model: model name sent to the endpoint.
        allow_remote: allow a non-loopback endpoint (images leave the machine).
        timeout_s: seconds to wait for one MLLM reply.
        cache_dir: folder of cached MLLM replies ("" = ``$MEDSAM3_CACHE/agent`` or
            ``~/.cache/medsam3/agent``).
        min_gain: a candidate replaces the current result only when it scores this much higher
            (and, on 2D planes, when the shipped replacement rule expects it to raise Dice:
            :mod:`medsam3.agent.gain`).
        refine_absent: also work on a concept the backend reported absent (empty mask); by
            default such a result is scored and kept, so the agent never turns an absent
            concept into a present one.
    """

    mode: str = "rules"
    max_rounds: int = 2
    accept: float = 0.7
    max_encodings: int = 2
    endpoint: str = "http://127.0.0.1:8000/v1"
    model: str = "medsam3-agent"
    allow_remote: bool = False
    timeout_s: float = 30.0
    cache_dir: str = ""
    min_gain: float = 0.01
    refine_absent: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"agent mode {self.mode!r} is unknown; choose one of {MODES}")
        if self.max_rounds < 0 or self.max_encodings < 0:
            raise ValueError("agent max_rounds and max_encodings must be >= 0")
        if not 0.0 <= self.accept <= 1.0:
            raise ValueError(f"agent accept must lie in [0, 1], got {self.accept}")

    @classmethod
    def from_value(cls, value: str | dict | AgentConfig | None) -> AgentConfig | None:
        """A config from ``load_model(agent=...)`` or the workflow's ``agent:`` mapping.

        Args:
            value: None, a mode name, a mapping of these fields, or a config.

        Returns:
            The config, or None when the agent is off.
        """
        if value is None:
            return None
        if isinstance(value, AgentConfig):
            config = value
        elif isinstance(value, str):
            config = cls(mode=value)
        else:
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown agent settings {sorted(unknown)}; known {sorted(known)}")
            config = cls(**value)
        return None if config.mode == "off" else config

    def cache_path(self) -> Path:
        """The folder of cached MLLM replies."""
        if self.cache_dir:
            return Path(self.cache_dir)
        root = os.environ.get("MEDSAM3_CACHE") or Path.home() / ".cache" / "medsam3"
        return Path(root) / "agent"

    def to_dict(self) -> dict:
        """The fields as a JSON-serialisable mapping."""
        return asdict(self)
