"""Serving under load: lmlab's server (continuous batching) against the same requests run one
after another through ``generate``.

A random decoder of GPT-2 small's shape (12 layers, 12 heads, 768 dims, vocab 50257, context
1024; ``--shape small`` or ``--shape tiny`` for less) is served on a free loopback port by the
app and engine of ``lmlab serve`` in a child process, as ``lmlab serve`` runs them (the engine
warmed up, on the process's main thread; uvicorn on another). A fixed number of requests (prompt lengths
and new-token counts drawn from ``--seed``; prompts are token ids; no EOS, so every request
makes exactly its tokens, greedily, without log-probabilities) is first run one after another
through :func:`lmlab.generation.stream_tokens` (what ``lmlab generate`` does, speculative
decoding included): the sequential row, whose ``ttft`` is the single-request prefill (time to
the first token). Then the same requests go to the server from 1, 4 and 16 concurrent streaming
clients.

How requests arrive: each client is a closed loop (it sends the next unsent request as soon as
its previous one finished), and the clients do not all start at once: client ``i`` starts
``i * gap`` seconds after the first, ``gap`` being ``--ramp-s`` or, by default, the sequential
row's median time to first token (16 clients are all running after 15 single-request prefills).
The clock of a row runs from the first client's start to the last response, the ramp included.
Every server row says how its requests arrived (``arrivals``). One JSON object per line:

    {"mode": "server", "clients": 16, "requests": 32, "tokens": ..., "seconds": ..., "tokens_per_s": ...,
     "ttft_p50_s": ..., "ttft_p95_s": ..., "latency_p50_s": ..., "latency_p95_s": ..., "arrivals": ...,
     "ratio": ..., "ttft_p95_over_prefill": ...}

``ratio``: the row's tokens/s over the sequential row's; ``ttft_p95_over_prefill``: a server
row's p95 time to first token over the sequential median. Rows print as they finish. The clients
run in this process, on the same two cores as the server. The
engine decodes without the int8 draft of speculative decoding, so its 1-client row is plain
one-row decoding; its 4- and 16-client rows against that row are the gain of batching alone.

    python benchmarks/serve_load.py [--shape gpt2|small|tiny] [--requests 32] [--clients 1,4,16] [--ramp-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import subprocess
import sys
import time

import httpx
import torch

from lmlab.generation import GenerationConfig, stream_tokens
from lmlab.models import ModelConfig, build_model
from lmlab.serving.app import create_app
from lmlab.serving.engine import Engine
from lmlab.serving.server import LOOPBACK, bound_socket, serve_until_interrupted
from lmlab.tokenizers import CharTokenizer

SHAPES = {  # n_layer, n_head, d_model, vocab_size, context_length
    "gpt2": (12, 12, 768, 50257, 1024),
    "small": (4, 8, 256, 8192, 512),
    "tiny": (2, 2, 32, 256, 128),
}
HANG_GUARD_S = 3600  # only catches a hung request; never a limit on how long it may take


def build(shape: str) -> tuple[torch.nn.Module, CharTokenizer]:
    """A random decoder of ``shape`` and a tokenizer of as many one-character tokens (no EOS)."""
    n_layer, n_head, d_model, vocab, context = SHAPES[shape]
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, d_model=d_model, context_length=context,
                         dropout=0.0)
    tokenizer = CharTokenizer([chr(0x100 + i) for i in range(vocab)])  # below the surrogates
    return build_model(config).eval(), tokenizer


def requests_for(count: int, seed: int, vocab: int, shape: str) -> list[tuple[list[int], int]]:
    """``count`` (prompt ids, new tokens) pairs drawn from ``seed``."""
    rng = random.Random(seed)
    longest_prompt, most_tokens = (64, 64) if shape != "tiny" else (24, 24)
    return [([rng.randrange(vocab) for _ in range(rng.randint(8, longest_prompt))], rng.randint(16, most_tokens))
            for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(mode: str, clients: int, tokens: int, seconds: float, ttft: list[float], latency: list[float]) -> dict:
    return {"mode": mode, "clients": clients, "requests": len(latency), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2), "ttft_p50_s": round(statistics.median(ttft), 4),
            "ttft_p95_s": round(percentile(ttft, 0.95), 4), "latency_p50_s": round(statistics.median(latency), 4),
            "latency_p95_s": round(percentile(latency, 0.95), 4)}


def sequential(model, requests) -> dict:
    """The requests one after another through ``stream_tokens``."""
    ttft, latency, tokens = [], [], 0
    began = time.perf_counter()
    for prompt, new_tokens in requests:
        start = time.perf_counter()
        for index, _ in enumerate(stream_tokens(model, prompt, GenerationConfig(strategy="greedy",
                                                                                max_new_tokens=new_tokens))):
            if index == 0:
                ttft.append(time.perf_counter() - start)
            tokens += 1
        latency.append(time.perf_counter() - start)
    return row("generate", 1, tokens, time.perf_counter() - began, ttft, latency)


async def one_request(http: httpx.AsyncClient, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, tokens) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"]:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, time.perf_counter() - start, tokens


async def load(url: str, requests, clients: int, gap_s: float) -> dict:
    """Every request sent by ``clients`` closed-loop clients: client ``i`` starts at ``i * gap_s``
    seconds, then each client sends the next unsent request as soon as its previous one finished."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    pending = iter(requests)
    results: list[tuple[float, float, int]] = []

    async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S, limits=limits) as http:
        async def client(index: int) -> None:
            await asyncio.sleep(index * gap_s)
            for prompt, new_tokens in pending:
                results.append(await one_request(http, prompt, new_tokens))

        began = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        seconds = time.perf_counter() - began
    result = row("server", clients, sum(r[2] for r in results), seconds, [r[0] for r in results],
                 [r[1] for r in results])
    result["arrivals"] = f"{clients} closed-loop clients, client i starts at i*{gap_s:.3f} s"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), default="gpt2")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per run, comma-separated")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ramp-s", type=float, default=None,
                        help="seconds between the starts of consecutive clients (default: the sequential "
                             "row's median time to first token, the single-request prefill)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.child:
        serve_child(args)
        return
    model, tokenizer = build(args.shape)
    requests = requests_for(args.requests, args.seed, tokenizer.vocab_size, args.shape)
    warmup = requests[:1]
    sequential(model, warmup)
    baseline = sequential(model, requests)
    gap_s = baseline["ttft_p50_s"] if args.ramp_s is None else args.ramp_s
    with server_process(args) as (url, native):
        print(json.dumps({"setup": args.shape, "parameters": sum(p.numel() for p in model.parameters()),
                          "threads": torch.get_num_threads(), "native": native, "client_start_gap_s": gap_s}),
              flush=True)
        report(baseline, baseline)
        asyncio.run(load(url, warmup, 1, 0.0))
        for clients in (int(c) for c in args.clients.split(",")):
            report(asyncio.run(load(url, requests, clients, gap_s)), baseline)


def serve_child(args: argparse.Namespace) -> None:
    """The server process: the same random model behind the engine and app, served as ``lmlab
    serve`` does; prints one JSON line (the URL, whether the native kernels run) when it listens."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # the parent's stop: Ctrl-C's clean way out
    model, tokenizer = build(args.shape)
    engine = Engine(model, max_batch=args.max_batch, max_queue=max(64, args.requests))
    engine.warm_up()
    app = create_app(model, tokenizer, engine, model_name=args.shape)
    native = engine.stats()["native"]
    with contextlib.suppress(KeyboardInterrupt):  # how SIGTERM from the parent ends it
        serve_until_interrupted(app, engine, bound_socket(LOOPBACK, 0),
                                lambda url: print(json.dumps({"url": url, "native": native}), flush=True))


@contextlib.contextmanager
def server_process(args: argparse.Namespace):
    """(URL, native) of the child server process while the block runs; SIGTERM ends it after (not
    SIGINT: a process started in the background of a shell ignores that)."""
    argv = [sys.executable, __file__, "--child", "--shape", args.shape, "--max-batch", str(args.max_batch),
            "--requests", str(args.requests)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"the server process exited ({child.wait(timeout=HANG_GUARD_S)}) before it listened")
        ready = json.loads(line)
        yield ready["url"], ready["native"]
    finally:
        child.terminate()
        child.wait(timeout=HANG_GUARD_S)


def report(result: dict, baseline: dict) -> None:
    """Print a row with its throughput over the sequential row's (``ratio``) and, for a server row,
    its p95 time to first token over the sequential median (``ttft_p95_over_prefill``)."""
    result["ratio"] = round(result["tokens_per_s"] / baseline["tokens_per_s"], 3)
    if result is not baseline:
        result["ttft_p95_over_prefill"] = round(result["ttft_p95_s"] / baseline["ttft_p50_s"], 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
