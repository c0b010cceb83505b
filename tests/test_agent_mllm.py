"""The opt-in MLLM planner against a real chat-completions server on 127.0.0.1.

The server (``http.server`` in a thread) answers with scripted replies: a tool call, malformed
JSON, a reply slower than the timeout, a refusal. The loop, the critic and the actions are the
real ones, on a real chest radiograph mask from the shared data set (skipped without it).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from medsam3.agent.config import AgentConfig
from medsam3.agent.critic import (
    DEFAULT_COEF,
    DEFAULT_INTERCEPT,
    FEATURES,
    critic_score,
    features,
)
from medsam3.agent.loop import run_loop
from medsam3.agent.mllm import MllmChooser, MllmError, check_endpoint, parse_tool_calls
from medsam3.agent.planner import Action, Candidate, drop_implausible
from medsam3.agent.priors import Priors, load_priors

# The critic with its built-in coefficients (fixed here; the shipped ones are refitted with
# each head): a wrong-side blob costs through relation and components.
CRITIC = Priors(load_priors().concepts, FEATURES, DEFAULT_COEF, DEFAULT_INTERCEPT)


def tool_reply(*names: str) -> dict:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for i, n in enumerate(names)
    ]
    return {"choices": [{"message": {"role": "assistant", "tool_calls": calls}}]}


class Server:
    """A chat-completions endpoint on 127.0.0.1 that plays scripted replies in order."""

    def __init__(self, script: list):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                reply = outer.script.pop(0) if outer.script else tool_reply()
                if isinstance(reply, tuple) and reply[0] == "sleep":
                    time.sleep(reply[1])
                    reply = tool_reply()
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def radiograph(shared_data):
    """A chest radiograph and its left lung mask with a stray blob on the wrong side."""
    image = np.asarray(Image.open(shared_data / "images/jsrt_hybridgnet/jsrt_jpcln004.png"))
    m = np.asarray(Image.open(shared_data / "masks/jsrt_hybridgnet/jsrt_jpcln004__left_lung.png"))
    mask = (m[..., 0] if m.ndim == 3 else m) > 127
    noisy = mask.copy()
    h, w = mask.shape
    noisy[h // 2 : h // 2 + h // 12, w // 8 : w // 8 + w // 12] = True  # image left: wrong side
    return image, noisy


def run(config: AgentConfig, image, mask):
    """One real loop over the drop action, with the MLLM choosing."""
    chooser = MllmChooser(config)

    def judge(c: Candidate) -> None:
        c.features = features("left lung", c.mask, c.presence, priors=CRITIC)
        c.score = critic_score(c.features, CRITIC)

    def propose(current, rnd, budget):
        return [
            Action(
                "drop", "implausible components", lambda: drop_implausible("left lung", current, {})
            )
        ]

    propose = chooser.wrap("left lung", image, "xray", propose)
    config = AgentConfig(**{**config.to_dict(), "accept": 0.999})
    return run_loop("left lung", Candidate(mask, 0.9), propose, judge, config), chooser


def make_config(server: Server, tmp_path, **kw) -> AgentConfig:
    return AgentConfig(mode="mllm", endpoint=server.endpoint, cache_dir=str(tmp_path), **kw)


def test_a_tool_call_runs_the_chosen_action(radiograph, tmp_path):
    image, mask = radiograph
    with Server([tool_reply("drop")]) as server:
        outcome, _ = run(make_config(server, tmp_path, max_rounds=1), image, mask)
    rows = outcome.trace
    assert rows[0]["action"] == "mllm" and rows[0]["reason"] == "chose drop"
    drop = next(r for r in rows if r["action"] == "drop")
    assert drop["decision"] == "accepted" and drop["critic_after"] > drop["critic_before"]
    assert outcome.changed and outcome.final.mask.sum() < mask.sum()
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert [t["function"]["name"] for t in body["tools"]] == ["drop"]
    _check_private(body)


def _check_private(body: dict) -> None:
    """Only the phrase, the critic's numbers and a PNG overlay leave the machine."""
    assert set(body) == {"model", "temperature", "messages", "tools", "tool_choice"}
    text, picture = body["messages"][1]["content"]
    assert "jsrt" not in json.dumps(body) and "/" not in text["text"]
    url = picture["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"{not json", "unparseable reply"),
        ({"choices": [{"message": {"refusal": "I cannot help with that"}}]}, "refused"),
        (("sleep", 3.0), "timeout"),
        ({"object": "error"}, "unparseable reply"),
    ],
)
def test_failures_fall_back_to_the_rules_planner(radiograph, tmp_path, reply, reason):
    image, mask = radiograph
    with Server([reply]) as server:
        config = make_config(server, tmp_path, max_rounds=1, timeout_s=1.0)
        outcome, _ = run(config, image, mask)
    fallback = outcome.trace[0]
    assert fallback["action"] == "mllm:fallback" and reason in fallback["reason"]
    assert any(r["action"] == "drop" and r["decision"] == "accepted" for r in outcome.trace)
    assert not list(tmp_path.glob("*.json"))  # a failed reply is never cached


def test_a_rerun_is_served_from_the_reply_cache(radiograph, tmp_path):
    image, mask = radiograph
    with Server([tool_reply("drop"), tool_reply()]) as server:
        config = make_config(server, tmp_path, max_rounds=2)
        first, chooser = run(config, image, mask)
        assert chooser.requests == len(server.requests) >= 1
        served = len(server.requests)
        second, again = run(config, image, mask)
    assert again.requests == 0 and len(server.requests) == served
    assert second.trace == first.trace
    assert np.array_equal(second.final.mask, first.final.mask)


def test_remote_hosts_need_allow_remote():
    with pytest.raises(ValueError, match="not loopback"):
        check_endpoint("https://api.example.com/v1", allow_remote=False)
    with pytest.raises(ValueError, match="not loopback"):
        MllmChooser(AgentConfig(mode="mllm", endpoint="http://10.1.2.3:8000/v1"))
    check_endpoint("https://api.example.com/v1", allow_remote=True)
    for local in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://[::1]:80/v1"):
        check_endpoint(local, allow_remote=False)
    with pytest.raises(ValueError, match="http"):
        check_endpoint("file:///etc/passwd", allow_remote=True)


def test_parse_tool_calls():
    assert parse_tool_calls(tool_reply("relax", "box_peak")) == ["relax", "box_peak"]
    assert parse_tool_calls({"choices": [{"message": {"content": "looks fine"}}]}) == []
    with pytest.raises(MllmError):
        parse_tool_calls({"choices": []})
