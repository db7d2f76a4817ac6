"""``lmlab serve`` as a process on a free loopback port, serving a tiny Llama chat model: chat
completions through the ``openai`` client (the reply is what ``generate`` makes of the chat
template's prompt), streamed and with logprobs; the process stops on SIGINT
without a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serving_helpers import HANG_GUARD_S

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # a server process with a Hugging Face model
pytest.importorskip("transformers")

from tiny_models import chat_model_dir  # noqa: E402

from lmlab.generation import GenerationConfig, generate  # noqa: E402
from lmlab.training.run import load_run  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"
MESSAGES = [{"role": "system", "content": "w1"}, {"role": "user", "content": "w2 w3 w4"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    return chat_model_dir(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def served(chat_dir):
    """The URL of ``lmlab serve CHAT_DIR --port 0``."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", str(chat_dir), "--port", "0"],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        assert found, line + process.stderr.read()
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=HANG_GUARD_S) == 130  # the exit code of an interrupted lmlab command
        assert "Traceback" not in process.stderr.read()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0, timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def greedy_reply(chat_dir):
    run = load_run(chat_dir, print)
    return lambda max_tokens: _greedy_reply(run, max_tokens)


def _greedy_reply(run, max_tokens: int) -> tuple[str, str]:
    """The reply ``generate`` makes greedily of the chat template's prompt, and its finish reason."""
    tokenizer = run.tokenizer
    eos = tokenizer.special_tokens["eos"]
    prompt = tokenizer.encode(tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True))
    ids = generate(run.model, prompt, GenerationConfig(strategy="greedy", max_new_tokens=max_tokens, eos_ids=(eos,)))
    finish = "stop" if ids and ids[-1] == eos else "length"
    return tokenizer.decode([i for i in ids if i != eos], skip_special_tokens=True), finish


def test_a_greedy_chat_reply_is_what_generate_makes(greedy_reply, client):
    model = client.models.list().data[0].id
    done = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0)
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == greedy_reply(10)
    assert done.choices[0].message.role == "assistant"
    assert done.usage.prompt_tokens > 0


def test_a_streamed_chat_reply_with_logprobs(greedy_reply, client):
    model = client.models.list().data[0].id
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0,
                                                 stream=True, logprobs=True, top_logprobs=2,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_reply(10)[0]
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert entries and all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.logprob for e in entries)
    assert chunks[-1].usage.completion_tokens >= len(entries)
