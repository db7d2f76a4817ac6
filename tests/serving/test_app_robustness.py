"""What a server must survive: a wrong or missing API key (401), a full queue (429 with
Retry-After), a streaming client that leaves (its engine request is cancelled) and 200 random
and malformed requests, after which a normal request still succeeds."""

from __future__ import annotations

import json
import random

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from serving_helpers import HANG_GUARD_S, MODEL_NAME, tiny_decoder  # noqa: E402

from lmlab.serving.app import create_app  # noqa: E402
from lmlab.serving.requests import QueueFull, RequestHandle, TokenEvent  # noqa: E402
from lmlab.serving.server import BackgroundServer  # noqa: E402

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def keyed(server):
    """The test model's engine behind a second app that wants an API key."""
    app = create_app(server.model, server.tokenizer, server.engine, model_name=MODEL_NAME, api_key=KEY)
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=HANG_GUARD_S) as http:
        yield http


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Bearer {KEY}x"}])
def test_a_missing_or_wrong_key_is_401_on_every_route_but_health(keyed, headers):
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/"), ("POST", "/v1/completions"),
                         ("POST", "/tokenize"), ("GET", "/no-such-route")]:
        response = keyed.request(method, path, json={"prompt": "the"}, headers=headers)
        assert response.status_code == 401, path
        assert "API key" in response.json()["error"]["message"]
    assert keyed.get("/health", headers=headers).status_code == 200


def test_the_right_key_is_let_in(keyed):
    headers = {"Authorization": f"Bearer {KEY}"}
    response = keyed.post("/v1/completions", json={"prompt": "the", "max_tokens": 3}, headers=headers)
    assert response.status_code == 200, response.text
    assert keyed.get("/v1/models", headers=headers).status_code == 200


class FullEngine:
    """An engine whose queue is always full."""

    def submit(self, request, on_event):
        raise QueueFull("full")

    def stats(self) -> dict:
        return {"queue_depth": 64, "running": 16, "max_batch": 16}


def test_a_full_queue_is_429_with_retry_after():
    model, tokenizer = tiny_decoder()
    app = create_app(model, tokenizer, FullEngine(), model_name=MODEL_NAME)
    with BackgroundServer(app) as running:
        response = httpx.post(running.url + "/v1/completions", json={"prompt": "the"}, timeout=HANG_GUARD_S)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "busy" in response.json()["error"]["message"]


class SilentEngine:
    """An engine that sends one token per request and then waits until the request is cancelled."""

    def __init__(self):
        self.handles: list[RequestHandle] = []

    def submit(self, request, on_event):
        handle = RequestHandle(len(self.handles))
        self.handles.append(handle)
        on_event(TokenEvent(request.prompt_ids[0], -0.5, [], None))
        return handle

    def stats(self) -> dict:
        return {}


def test_a_streaming_client_that_leaves_cancels_its_request():
    model, tokenizer = tiny_decoder()
    engine = SilentEngine()
    with BackgroundServer(create_app(model, tokenizer, engine, model_name=MODEL_NAME)) as running:
        with httpx.Client(timeout=HANG_GUARD_S) as http, http.stream(
                "POST", running.url + "/v1/completions", json={"prompt": "the", "max_tokens": 50, "stream": True}
        ) as response:
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            first = next(lines)
            assert json.loads(first[6:])["choices"][0]["text"] == "t"
            assert not engine.handles[0].cancelled.is_set()
        assert engine.handles[0].cancelled.wait(HANG_GUARD_S)


# ------------------------------------------------------------------------------ fuzzing
FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
          "presence_penalty", "frequency_penalty", "stop", "n", "seed", "logprobs", "top_logprobs", "stream",
          "model", "echo", "stream_options", "input", "tokens"]
PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/detokenize", "/v1/models",
         "/health", "/metrics", "/", "/v1/nothing", "/v1/completions/x"]


def _value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "none", "big", "neg", "nan"] + (["list", "dict"] if depth < 2 else [])
    kind = rng.choice(kinds)
    return {
        "int": lambda: rng.randint(-3, 70), "float": lambda: rng.uniform(-3, 3), "bool": lambda: rng.random() < 0.5,
        "str": lambda: "".join(rng.choice("the fox\n\u00e9\u4e16\U0001f600\x00\"\\") for _ in range(rng.randint(0, 12))),
        "none": lambda: None, "big": lambda: 10 ** rng.randint(5, 30), "neg": lambda: -rng.randint(1, 10 ** 6),
        "nan": lambda: rng.choice([float("nan"), float("inf"), -float("inf")]),
        "list": lambda: [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))],
        "dict": lambda: {rng.choice(FIELDS + ["role", "content"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))},
    }[kind]()


def _random_request(rng: random.Random) -> tuple[str, str, bytes]:
    """A method, a path and a body: mostly JSON objects with random fields, some broken bytes."""
    path = rng.choice(PATHS)
    method = "POST" if rng.random() < 0.85 else rng.choice(["GET", "PUT", "DELETE"])
    roll = rng.random()
    if roll < 0.15:
        return method, path, bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    body = {name: _value(rng) for name in rng.sample(FIELDS, rng.randint(0, 6))}
    if roll < 0.6:  # mostly valid around one bad field
        body.setdefault("prompt", "the fox")
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
        body["max_tokens"] = rng.choice([1, 2, 3, body.get("max_tokens")])
    text = json.dumps(body, allow_nan=True)
    if roll > 0.9:
        text = text[: rng.randint(0, len(text))]  # cut short
    return method, path, text.encode("utf-8", "surrogatepass")


def test_200_random_requests_then_a_normal_one_succeeds(server):
    rng = random.Random(1234)
    statuses = []
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as http:
        for _ in range(200):
            method, path, body = _random_request(rng)
            response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
            statuses.append(response.status_code)
            assert response.status_code < 500, (method, path, body, response.text)
        normal = http.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 5, "temperature": 0})
    assert normal.status_code == 200 and normal.json()["choices"][0]["text"] == server.greedy_text("the quick", 5)
    assert 400 in statuses and 200 in statuses
