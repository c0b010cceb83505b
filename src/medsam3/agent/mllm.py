"""Opt-in MLLM planning: an OpenAI-compatible ``/v1/chat/completions`` endpoint picks the fixes.

Each round the endpoint receives one rendered PNG overlay (the windowed plane with the mask in
red, at most 512 pixels a side; for volumes and videos the plane where the mask is largest),
the concept phrase and the critic's numbers, and the planner's actions as function-calling
``tools``. Its tool calls choose which actions run, in order; the critic still decides whether
a candidate replaces the result. Privacy: nothing else is sent (no DICOM header, study id or
path); a host that is not loopback is refused unless ``allow_remote`` is set.

Failures never stop a job: a timeout, an HTTP or network error, an unparseable reply or a
refusal falls back to the rules planner for that round, and the trace says so. Replies are
cached on disk by the SHA-256 of the request, so a rerun is reproducible and makes no request
for what it already asked. Standard library only (``urllib.request``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from medsam3.agent.config import AgentConfig
from medsam3.agent.planner import Action, Candidate
from medsam3.models.preprocess import to_uint8_rgb

MAX_SIDE = 512
SYSTEM_PROMPT = (
    "You check a medical image segmentation. The image shows the mask of one concept in red. "
    "The critic's numbers describe how plausible the mask is (critic_score near 1: plausible). "
    "Call the tools that should be tried to improve the mask, most promising first, or call "
    "none when the mask looks right."
)


class MllmError(RuntimeError):
    """The endpoint gave no usable answer (the rules planner takes over)."""


def check_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Refuse an endpoint that is not on this machine unless remote use is allowed.

    Raises:
        ValueError: a non-loopback host without ``allow_remote``, or not an http(s) URL.
    """
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"agent endpoint {endpoint!r} is not an http(s) URL")
    if allow_remote or _is_loopback(url.hostname):
        return
    raise ValueError(
        f"agent endpoint host {url.hostname!r} is not loopback: images would leave this machine. "
        "Use a local server (127.0.0.1) or set agent allow_remote: true if that is allowed"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tool_name(action: str) -> str:
    """An action name as a function name the API accepts (``box:peak`` -> ``box_peak``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", action)[:64]


def render_overlay(plane: np.ndarray, mask: np.ndarray, modality: str | None) -> bytes:
    """A windowed plane with the mask in red, as PNG bytes (longest side <= MAX_SIDE).

    Args:
        plane: (y, x) or (y, x, c) plane, any dtype (CT in HU is windowed).
        mask: (y, x) bool mask.
        modality: windows the intensities.

    Returns:
        PNG file bytes (no metadata).
    """
    rgb = to_uint8_rgb(plane, modality).astype(np.float32)
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    img = Image.fromarray(rgb.astype(np.uint8))
    img.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def plane_of(array: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plane to show: the image itself, or the slice / frame where the mask is largest."""
    if mask.ndim == 2:
        plane = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        return plane, mask
    k = int(np.argmax(mask.reshape(len(mask), -1).sum(1))) if mask.any() else len(mask) // 2
    return array[k], mask[k]


class MllmChooser:
    """Asks the endpoint which planner actions to run (see the module docstring).

    Args:
        config: endpoint, model, timeout, cache folder and ``allow_remote``.
    """

    def __init__(self, config: AgentConfig) -> None:
        check_endpoint(config.endpoint, config.allow_remote)
        self.config = config
        self.cache = config.cache_path()
        self.requests = 0  # HTTP requests made (a cached reply makes none)

    def wrap(self, phrase: str, array: np.ndarray, modality: str | None, propose: Callable):
        """A ``propose`` that lets the endpoint choose among the rules planner's actions."""

        def choose(current: Candidate, rnd: int, budget: int) -> list[Action]:
            actions = propose(current, rnd, budget)
            if not actions:
                return actions
            try:
                picked = self.pick(phrase, array, modality, current, actions)
            except MllmError as err:
                return [_note("mllm:fallback", f"rules planner: {err}"), *actions]
            names = ", ".join(a.name for a in picked) or "none"
            return [_note("mllm", f"chose {names}"), *picked]

        return choose

    def pick(self, phrase, array, modality, current: Candidate, actions: list[Action]):
        """The actions the endpoint calls, in its order.

        Raises:
            MllmError: timeout, HTTP error, refusal or unparseable reply.
        """
        body = self.request(phrase, array, modality, current, actions)
        reply = self.reply(body)
        by_tool = {tool_name(a.name): a for a in actions}
        return [by_tool[n] for n in dict.fromkeys(parse_tool_calls(reply)) if n in by_tool]

    def request(self, phrase, array, modality, current: Candidate, actions) -> dict:
        """The chat-completions request body: overlay, critic numbers and tools only."""
        plane, mask = plane_of(np.asarray(array), current.mask)
        png = base64.b64encode(render_overlay(plane, mask, modality)).decode("ascii")
        numbers = {k: round(float(v), 3) for k, v in current.features.items()}
        numbers["critic_score"] = round(float(current.score), 3)
        text = f"Concept: {phrase}\nCritic: {json.dumps(numbers, sort_keys=True)}"
        content = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        ]
        return {
            "model": self.config.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": content},
            ],
            "tools": [_tool(a) for a in actions],
            "tool_choice": "auto",
        }

    def reply(self, body: dict) -> dict:
        """The endpoint's reply to a request, from the cache when it was asked before."""
        data = json.dumps(body, sort_keys=True).encode("utf-8")
        path = self.cache / f"{hashlib.sha256(data).hexdigest()}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        reply = self._post(data)
        parse_tool_calls(reply)  # only a usable reply is cached
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(reply, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
        return reply

    def _post(self, data: bytes) -> dict:
        url = self.config.endpoint.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get("MEDSAM3_MLLM_API_KEY"):
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                text = response.read().decode("utf-8")
        except TimeoutError as err:
            raise MllmError(f"timeout after {self.config.timeout_s} s") from err
        except (urllib.error.URLError, OSError) as err:
            raise MllmError(f"endpoint error: {_reason(err)}") from err
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise MllmError(f"unparseable reply ({err.msg})") from err


def _reason(err: Exception) -> str:
    """A short reason of a urllib error (a wrapped timeout says so)."""
    reason = getattr(err, "reason", err)
    if isinstance(reason, TimeoutError):
        return "timeout"
    return type(reason).__name__ if not isinstance(reason, str) else reason


def parse_tool_calls(reply: dict) -> list[str]:
    """The function names a chat-completions reply calls ([] when it calls none).

    Raises:
        MllmError: the reply is not a chat completion, or the model refused.
    """
    try:
        message = reply["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as err:
        raise MllmError("unparseable reply (no choices[0].message)") from err
    if message.get("refusal"):
        raise MllmError(f"refused: {str(message['refusal'])[:80]}")
    calls = message.get("tool_calls") or []
    try:
        return [c["function"]["name"] for c in calls]
    except (KeyError, TypeError) as err:
        raise MllmError("unparseable reply (tool call without function name)") from err


def _tool(action: Action) -> dict:
    return {
        "type": "function",
        "function": {
            "name": tool_name(action.name),
            "description": action.reason,
            "parameters": {"type": "object", "properties": {}},
        },
    }


def _note(name: str, reason: str) -> Action:
    """A trace-only action: records what the MLLM did, makes no candidate."""
    return Action(name, reason, lambda: None, note=True)
