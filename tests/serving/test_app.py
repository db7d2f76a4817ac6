"""The OpenAI-compatible app on a loopback port, through the official ``openai`` client and raw
HTTP: completions, chat, streaming, logprobs, ``n``, stop strings, the errors, the metrics, and
greedy output equal to ``generate``'s (also for 8 concurrent requests sharing the batch)."""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from serving_helpers import BODY_LIMIT, CONTEXT, HANG_GUARD_S, MODEL_NAME

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD_S) as session:
        yield session


def test_a_greedy_completion_is_what_generate_makes(server, client):
    done = client.completions.create(model=MODEL_NAME, prompt="the quick ", max_tokens=20, temperature=0)
    choice = done.choices[0]
    assert choice.text == server.greedy_text("the quick ", 20)
    assert choice.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens == len("the quick ")
    assert done.usage.completion_tokens == done.usage.total_tokens - done.usage.prompt_tokens > 0


def test_streaming_gives_the_same_text_in_pieces_and_ends(server, client):
    pieces, reasons = [], []
    for chunk in client.completions.create(model=MODEL_NAME, prompt="lazy ", max_tokens=24, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == server.greedy_text("lazy ", 24)
    assert len(pieces) > 1 and reasons[-1] in ("stop", "length") and not any(reasons[:-1])


def test_the_stream_is_server_sent_events_ending_with_done(http):
    with http.stream("POST", "/v1/completions", json={"prompt": "fox", "max_tokens": 5, "temperature": 0,
                                                       "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_logprobs_are_the_models_log_softmax(server, client):
    prompt = "over the "
    done = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    logprobs = done.choices[0].logprobs
    tokenizer = server.tokenizer
    ids = tokenizer.encode(prompt) + [tokenizer.encode(t)[0] for t in logprobs.tokens]
    with torch.no_grad():  # float64 recomputation without the cache or the native kernels
        model64 = _float64_copy(server.model)
        hidden = model64.hidden_states(torch.tensor([ids]))
        reference = torch.log_softmax(model64.lm_head(hidden)[0], dim=-1)  # (T, V)
    start = len(tokenizer.encode(prompt))
    for step, (token, logprob, top) in enumerate(zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs)):
        row = reference[start - 1 + step]
        assert logprob == pytest.approx(float(row[tokenizer.encode(token)[0]]), abs=1e-4)
        best = torch.topk(row, 3)
        assert list(top) == [tokenizer.decode([int(i)]) for i in best.indices]
        assert list(top.values()) == pytest.approx(best.values.tolist(), abs=1e-4)
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]


def _float64_copy(model):
    import copy

    return copy.deepcopy(model).double()


def test_n_2_gives_two_sampled_choices(client):
    done = client.completions.create(model=MODEL_NAME, prompt="THE ", max_tokens=12, n=2, temperature=1.0, seed=3)
    assert [c.index for c in done.choices] == [0, 1]
    assert done.usage.prompt_tokens == 4  # the prompt counts once
    again = client.completions.create(model=MODEL_NAME, prompt="THE ", max_tokens=12, n=2, temperature=1.0, seed=3)
    assert [c.text for c in again.choices] == [c.text for c in done.choices]  # a seed makes sampling repeatable


def test_a_stop_string_cuts_the_text_and_finishes_with_stop(server, client):
    reference = server.greedy_text("dog", 30)
    stop = reference[4:6]
    done = client.completions.create(model=MODEL_NAME, prompt="dog", max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert done.choices[0].text == reference[:reference.find(stop)]
    assert done.choices[0].finish_reason == "stop"


def test_greedy_equals_generate_for_8_concurrent_different_requests(server, http):
    prompts = ["the ", "quick brown", "fox jumps", "over", "THE END", "lazy dog.", "q", "jumps over the"]
    lengths = [30, 12, 25, 40, 8, 20, 35, 16]

    def complete(prompt: str, max_tokens: int) -> str:
        response = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                                                      "temperature": 0})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        texts = list(pool.map(complete, prompts, lengths))
    assert texts == [server.greedy_text(p, m) for p, m in zip(prompts, lengths)]


def test_a_prompt_of_token_ids_and_several_prompts(server, http):
    ids = server.tokenizer.encode("the lazy")
    body = http.post("/v1/completions", json={"prompt": [ids, ids[:3]], "max_tokens": 5, "temperature": 0}).json()
    assert [c["text"] for c in body["choices"]] == [server.greedy_text("the lazy", 5), server.greedy_text("the", 5)]
    assert body["usage"]["prompt_tokens"] == len(ids) + 3


@pytest.mark.parametrize("field, value", [("top_p", 2), ("max_tokens", -1), ("n", 0), ("temperature", "hot"),
                                          ("stop", 5), ("logprobs", 99), ("prompt", {"text": "a"}), ("stream", "yes"),
                                          ("presence_penalty", 3.0), ("seed", 1.5)])
def test_an_invalid_field_is_400_naming_it(http, field, value):
    response = http.post("/v1/completions", json={"prompt": "the", field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_a_request_past_the_context_is_400_naming_both_numbers(http):
    response = http.post("/v1/completions", json={"prompt": "the quick", "max_tokens": CONTEXT})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "9" in message and str(CONTEXT) in message and "max_tokens" in message


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(http, body):
    response = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_an_unknown_model_is_404(http):
    response = http.post("/v1/completions", json={"model": "gpt-9", "prompt": "the"})
    assert response.status_code == 404
    assert "gpt-9" in response.json()["error"]["message"]


def test_an_oversized_body_is_413(http):
    response = http.post("/v1/completions", json={"prompt": "a" * (BODY_LIMIT + 1)})
    assert response.status_code == 413


def test_chat_needs_a_chat_template(http):
    response = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert "chat template" in response.json()["error"]["message"]


def test_models_health_tokenize_and_detokenize(server, http):
    assert http.get("/health").json() == {"status": "ok"}
    models = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [MODEL_NAME] and models[0]["max_model_len"] == CONTEXT
    tokens = http.post("/tokenize", json={"prompt": "the fox"}).json()
    assert tokens["tokens"] == server.tokenizer.encode("the fox") and tokens["count"] == 7
    assert http.post("/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "the fox"}
    assert http.post("/detokenize", json={"tokens": [10 ** 6]}).status_code == 400
    assert http.post("/v1/embeddings", json={"input": "the fox"}).status_code == 400  # a decoder does not embed


def test_metrics_count_requests_tokens_and_latencies(http):
    http.post("/v1/completions", json={"prompt": "the", "max_tokens": 4, "temperature": 0})
    http.post("/v1/completions", json={"prompt": "the", "top_p": 2})
    text = http.get("/metrics").text
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")
    assert _sample(text, 'lmlab_requests_total{route="/v1/completions",status="200"}') >= 1
    assert _sample(text, 'lmlab_requests_total{route="/v1/completions",status="400"}') >= 1
    assert _sample(text, "lmlab_generation_tokens_total") >= 4
    assert _sample(text, "lmlab_prompt_tokens_total") >= 3
    assert _sample(text, "lmlab_time_to_first_token_seconds_count") >= 1
    assert _sample(text, "lmlab_time_per_output_token_seconds_count") >= 3
    assert _sample(text, 'lmlab_time_to_first_token_seconds_bucket{le="+Inf"}') == \
        _sample(text, "lmlab_time_to_first_token_seconds_count")
    for gauge in ("lmlab_queue_depth", "lmlab_running", "lmlab_max_batch"):
        assert _sample(text, gauge) >= 0
    assert re.search(r"^# TYPE lmlab_time_to_first_token_seconds histogram$", text, re.M)


def _sample(text: str, name: str) -> float:
    """The value of the sample line ``name`` of a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            value = float(line.split()[-1])
            assert math.isfinite(value)
            return value
    raise AssertionError(f"{name} not in the metrics:\n{text}")
