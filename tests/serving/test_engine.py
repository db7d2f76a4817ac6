"""The continuous-batching engine against ``generate`` (greedy and seeded sampling, token for
token, with other requests in the same batches), float64 recomputations (log-probabilities,
OpenAI penalties), and its limits: queue, context, cancellation, failing requests, stop."""

from __future__ import annotations

import math
import random
import threading

import pytest
import torch

import lmlab.generation.fast.swap as swap
from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate
from lmlab.generation.fast import ScreenedHead
from lmlab.generation.fast.block import NativeBlock
from lmlab.kernels import BLOCK_ROWS, load_native
from lmlab.models import ModelConfig, build_model
from lmlab.serving.batch import BatchCache
from lmlab.serving.engine import Engine
from lmlab.serving.requests import EngineRequest, QueueFull, TokenEvent
from lmlab.serving.sampler import RowSampler

VOCAB, CONTEXT = 37, 40
HANG_GUARD_S = 3600  # only against a hang; nothing here is timed


def tiny_model(position: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_heads=2, d_model=32,
                         context_length=CONTEXT, dropout=0.0, position=position)
    model = build_model(config).eval()
    with torch.no_grad():  # larger weights: sharp logits, so no near-ties between paths
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.3)
    return model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Ops on these tiny tensors are cheaper than waking a pool of intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_model("rope")


@pytest.fixture(params=["native", "plain"])
def kernels(request, monkeypatch):
    """Decode on the native path, or on the plain modules (as with LMLAB_NATIVE_KERNELS=0)."""
    if request.param == "native" and load_native() is None:
        pytest.skip("the native kernels are unavailable")
    if request.param == "plain":
        monkeypatch.setattr(swap, "load_native", lambda: None)
    return request.param


class Collector:
    """Events of one request, and a flag set by its last one."""

    def __init__(self, then=None):
        self.events: list[TokenEvent] = []
        self.finished = threading.Event()
        self.then = then

    def __call__(self, event: TokenEvent) -> None:
        self.events.append(event)
        if self.then is not None:
            self.then(self)
        if event.finish_reason is not None:
            self.finished.set()

    @property
    def tokens(self) -> list[int]:
        return [e.token_id for e in self.events if e.finish_reason != "error"]

    def wait(self) -> "Collector":
        assert self.finished.wait(HANG_GUARD_S)
        return self


def serve(engine: Engine, requests: list[EngineRequest]) -> list[Collector]:
    """Submit every request, start the engine, wait for all, stop it."""
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors):
        engine.submit(request, collector)
    engine.start()
    for collector in collectors:
        collector.wait()
    engine.stop()
    return collectors


def mixed_requests(seed: int, n: int = 8) -> list[EngineRequest]:
    """Greedy requests of different prompt lengths and budgets, each fitting the context."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))]
        requests.append(EngineRequest(prompt, rng.randint(1, CONTEXT - len(prompt)), temperature=0))
    return requests


def reference_greedy(model, request: EngineRequest) -> list[int]:
    config = GenerationConfig(strategy="greedy", max_new_tokens=request.max_new_tokens, eos_ids=request.eos_ids)
    return generate(model, request.prompt_ids, config)


@pytest.mark.parametrize("position, max_batch, prefill_chunk", [
    ("rope", 8, 256), ("rope", 3, 4), ("learned", 3, 4), ("alibi", 3, 4),  # ALiBi reads slot distances
])
def test_greedy_through_the_batch_equals_generate(position, kernels, max_batch, prefill_chunk, monkeypatch):
    model = tiny_model(position)
    requests = mixed_requests(seed=1)
    expected = [reference_greedy(model, r) for r in requests]
    shifts = []
    shift_to = BatchCache.shift_to
    monkeypatch.setattr(BatchCache, "shift_to", lambda self, target: (shifts.append(target), shift_to(self, target)))
    engine = Engine(model, max_batch=max_batch, prefill_chunk=prefill_chunk)
    assert engine.stats()["native"] == (kernels == "native")
    got = serve(engine, requests)
    assert [c.tokens for c in got] == expected
    assert all(c.events[-1].finish_reason == "length" for c in got)
    assert shifts  # rows were moved (a longer prompt joining, or the cache's end reached)
    stats = engine.stats()
    assert stats["decoded_rows"] > stats["decode_steps"]  # steps really were shared
    assert stats["finished"]["length"] == len(requests)


def test_a_long_prompt_prefills_in_chunks_while_others_decode(model):
    order: list[str] = []
    engine = Engine(model, max_batch=2, prefill_chunk=4)
    short = Collector(then=lambda c: order.append("short"))
    long_prompt = Collector(then=lambda c: order.append("long"))
    short_request, long_request = EngineRequest([7], 12, temperature=0), EngineRequest(list(range(29)), 3, temperature=0)
    engine.submit(short_request, short)
    engine.submit(long_request, long_prompt)
    engine.start()
    short.wait(), long_prompt.wait()
    engine.stop()
    assert order.index("long") >= 6  # 29 prompt tokens, 4 a step boundary: the short one went on decoding
    assert short.tokens == reference_greedy(model, short_request)
    assert long_prompt.tokens == reference_greedy(model, long_request)


def test_a_short_request_does_not_wait_for_a_long_one(model):
    finished: list[str] = []
    engine = Engine(model, max_batch=2)
    long, short = (Collector(then=lambda c, name=name: finished.append(name) if c.events[-1].finish_reason else None)
                   for name in ("long", "short"))
    engine.submit(EngineRequest([1, 2], CONTEXT - 2, temperature=0), long)
    engine.submit(EngineRequest([3, 4], 2, temperature=0), short)
    engine.start()
    long.wait(), short.wait()
    engine.stop()
    assert finished == ["short", "long"]


@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
def test_prompts_that_arrive_together_prefill_in_one_pass_and_equal_generate(position, kernels, monkeypatch):
    model = tiny_model(position)
    requests = mixed_requests(seed=5, n=6)
    expected = [reference_greedy(model, r) for r in requests]
    groups = []
    together = Engine._prefill_together
    monkeypatch.setattr(Engine, "_prefill_together", lambda self, group: groups.append(len(group)) or together(self, group))
    got = serve(Engine(model, prefill_chunk=256), requests)
    assert [c.tokens for c in got] == expected
    assert groups and groups[0] > 1  # several left-padded prompts in one forward pass


def test_more_rows_than_the_kernels_take_decode_in_groups_and_equal_generate(kernels, monkeypatch):
    model = tiny_model("rope")
    requests = mixed_requests(seed=4, n=BLOCK_ROWS + 3)  # as rows finish, steps of 9 to 16 rows in one call
    for request in requests:
        request.logprobs = False  # the head screen too, in groups of 8 rows
    expected = [reference_greedy(model, r) for r in requests]
    grouped = []
    in_groups = NativeBlock._step_in_groups
    monkeypatch.setattr(NativeBlock, "_step_in_groups", staticmethod(lambda *a: grouped.append(a[1].size(0)) or in_groups(*a)))
    engine = Engine(model, max_batch=BLOCK_ROWS + 3, prefill_chunk=1024)  # every prompt at the first boundary
    got = serve(engine, requests)
    assert [c.tokens for c in got] == expected
    assert any(rows > BLOCK_ROWS for rows in grouped) == (kernels == "native")  # decode steps of over BLOCK_ROWS rows


def test_greedy_without_logprobs_takes_the_head_screen_and_still_equals_generate(monkeypatch):
    if load_native() is None:
        pytest.skip("the native kernels are unavailable")
    model = tiny_model("rope")
    requests = mixed_requests(seed=3)
    for request in requests:
        request.logprobs = False
    expected = [reference_greedy(model, r) for r in requests]  # before the spy: generate screens too
    screened = []
    top_logits = ScreenedHead.top_logits
    monkeypatch.setattr(ScreenedHead, "top_logits", lambda self, h, k: screened.append(k) or top_logits(self, h, k))
    got = serve(Engine(model), requests)
    assert [c.tokens for c in got] == expected
    assert screened and all(math.isnan(e.logprob) for c in got for e in c.events)


def test_a_warmed_up_engine_run_on_this_thread_serves_and_stops(kernels):
    model = tiny_model("rope")
    requests = mixed_requests(seed=4, n=4)
    expected = [reference_greedy(model, r) for r in requests]
    engine = Engine(model, max_batch=2)
    engine.warm_up()
    assert engine.stats()["decode_steps"] == engine.stats()["prompt_tokens"] == 0  # the warm-up counts nowhere
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors):
        engine.submit(request, collector)

    def wait_then_stop():
        for collector in collectors:
            collector.wait()
        engine.stop()  # from another thread: run() returns

    stopper = threading.Thread(target=wait_then_stop)
    stopper.start()
    engine.run()  # the scheduler on this (the test's) thread
    stopper.join(HANG_GUARD_S)
    assert [c.tokens for c in collectors] == expected
    assert engine.stats()["finished"]["length"] == len(requests)
    with pytest.raises(LmlabError, match="started already"):
        engine.start()
    with pytest.raises(LmlabError, match="before starting"):
        engine.warm_up()


@pytest.mark.parametrize("position, max_batch", [("rope", 1), ("learned", 1), ("alibi", 3), ("rope", 3)])
def test_a_lone_greedy_row_decodes_speculatively_with_the_tokens_of_generate(position, max_batch, kernels):
    model = tiny_model(position)
    requests = [EngineRequest(r.prompt_ids, r.max_new_tokens, temperature=0, logprobs=False)
                for r in mixed_requests(seed=5, n=5)]
    requests.append(EngineRequest([4, 2], CONTEXT - 2, temperature=0, logprobs=False))  # outlives the others: alone at the end
    expected = [reference_greedy(model, r) for r in requests]
    engine = Engine(model, max_batch=max_batch)
    assert [c.tokens for c in serve(engine, requests)] == expected
    plain_steps = sum(len(tokens) - 1 for tokens in expected)  # row steps; the first token of each comes from its prefill
    if kernels == "native":  # the int8 draft's proposals: several tokens in one step
        assert engine.stats()["decoded_rows"] < plain_steps
    else:
        assert engine.stats()["decoded_rows"] == plain_steps


def test_draft_tokens_out_of_range_is_a_one_line_error(model):
    with pytest.raises(LmlabError, match="draft_tokens must be between 0 and 7, got 8"):
        Engine(model, draft_tokens=8)


def test_eos_finishes_with_stop_and_the_budget_with_length(model):
    prompt = [3, 1, 4, 1, 5]
    free = reference_greedy(model, EngineRequest(prompt, 12, temperature=0))
    eos = free[4]
    stopping = EngineRequest(prompt, 12, temperature=0, eos_ids=(eos,))
    [stop, length] = serve(Engine(model), [stopping, EngineRequest(prompt, 3, temperature=0)])
    assert stop.tokens == reference_greedy(model, stopping) == free[:free.index(eos) + 1]
    assert stop.events[-1].finish_reason == "stop"
    assert [e.finish_reason for e in length.events] == [None, None, "length"]
    assert (length.events[-1].prompt_tokens, length.events[-1].completion_tokens) == (5, 3)


def test_a_cancelled_request_frees_its_row_for_the_next(model):
    engine = Engine(model, max_batch=1)
    long = Collector(then=lambda c: engine_handles[0].cancel() if len(c.events) == 2 else None)
    short_request = EngineRequest([2, 7, 1], 5, temperature=0)
    short = Collector()
    engine_handles = [engine.submit(EngineRequest([5, 6], CONTEXT - 2, temperature=0), long)]
    engine.submit(short_request, short)
    engine.start()
    short.wait()
    engine.stop()
    assert short.tokens == reference_greedy(model, short_request)
    assert 2 <= len(long.events) < CONTEXT - 2 and long.events[-1].finish_reason is None
    assert engine.stats()["finished"]["cancelled"] == 1


def test_a_full_queue_raises_queue_full(model):
    engine = Engine(model, max_queue=2)  # not started: requests wait
    for _ in range(2):
        engine.submit(EngineRequest([1, 2], 3, temperature=0), Collector())
    with pytest.raises(QueueFull):
        engine.submit(EngineRequest([1, 2], 3, temperature=0), Collector())
    assert engine.stats()["queue_depth"] == 2


def test_stop_ends_the_waiting_requests_with_an_error_event(model):
    engine = Engine(model)
    waiting = Collector()
    engine.submit(EngineRequest([1, 2], 3, temperature=0), waiting)
    engine.stop()
    assert [(e.finish_reason, e.error) for e in waiting.events] == [("error", "the engine stopped")]
    with pytest.raises(LmlabError, match="stopped"):
        engine.submit(EngineRequest([1, 2], 3, temperature=0), Collector())


def test_a_request_past_the_context_names_both_numbers(model):
    engine = Engine(model)
    with pytest.raises(LmlabError, match=rf"\(30 tokens\) plus max_new_tokens \(11\).*{CONTEXT}"):
        engine.submit(EngineRequest(list(range(30)), 11), Collector())


@pytest.mark.parametrize("bad, words", [
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[VOCAB]), "vocabulary"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), "top-p"),
    (dict(top_k=0), "top-k"),
    (dict(min_p=2.0), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(top_logprobs=21), "top_logprobs"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty"),
])
def test_impossible_requests_are_refused_with_one_line(model, bad, words):
    request = EngineRequest(**{**dict(prompt_ids=[1, 2], max_new_tokens=3), **bad})
    with pytest.raises(LmlabError, match=words):
        Engine(model).submit(request, Collector())


def test_seeded_sampling_is_the_same_whatever_shares_the_batch(model, kernels):
    seeded = EngineRequest([4, 2, 9], 20, temperature=0.9, top_k=12, top_p=0.95, seed=1234)
    [alone] = serve(Engine(model), [seeded])
    neighbours = [EngineRequest([i + 1] * (i + 2), 15, temperature=1.3, seed=i) for i in range(5)]
    crowded = serve(Engine(model, prefill_chunk=3), neighbours[:2] + [seeded] + neighbours[2:])
    assert crowded[2].tokens == alone.tokens
    config = GenerationConfig(strategy="sample", max_new_tokens=20, temperature=0.9, top_k=12, top_p=0.95, seed=1234)
    assert alone.tokens == generate(model, seeded.prompt_ids, config)
    other_seed = serve(Engine(model), [EngineRequest([4, 2, 9], 20, temperature=0.9, top_k=12, top_p=0.95, seed=1)])
    assert other_seed[0].tokens != alone.tokens


def float64_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits (V,) after ``ids``, recomputed without a cache in float64."""
    double = tiny_copy_in_float64(model)
    with torch.no_grad():
        return double(torch.tensor([ids]))[0, -1]


_DOUBLES: dict[int, torch.nn.Module] = {}


def tiny_copy_in_float64(model):
    if id(model) not in _DOUBLES:
        double = build_model(model.config).eval().double()
        double.load_state_dict(model.state_dict())
        _DOUBLES[id(model)] = double
    return _DOUBLES[id(model)]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_the_log_softmax_of_the_model_logits(model, temperature):
    request = EngineRequest([8, 3, 3, 1], 6, temperature=temperature, seed=5, top_logprobs=4)
    got, _ = serve(Engine(model), [request, EngineRequest([2], 9, temperature=0)])
    history = list(request.prompt_ids)
    for event in got.events:
        reference = (float64_logits(model, history) / (temperature or 1.0)).log_softmax(-1)  # (V,)
        assert event.logprob == pytest.approx(float(reference[event.token_id]), abs=1e-4)
        best = torch.topk(reference, 4)
        assert [i for i, _ in event.top_logprobs] == best.indices.tolist()
        assert [v for _, v in event.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        history.append(event.token_id)


def test_presence_and_frequency_penalties_follow_openai(model):
    request = EngineRequest([1, 1, 2], 14, temperature=0, presence_penalty=0.8, frequency_penalty=0.6)
    got, _ = serve(Engine(model), [request, EngineRequest([5, 4], 10, temperature=0)])
    history, generated = list(request.prompt_ids), []
    for _ in range(request.max_new_tokens):
        logits = float64_logits(model, history)
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=VOCAB).double()
        logits = logits - 0.8 * (counts > 0).double() - 0.6 * counts
        generated.append(int(logits.argmax()))
        history.append(generated[-1])
    assert got.tokens == generated
    assert generated != reference_greedy(model, EngineRequest(request.prompt_ids, 14))  # the penalties mattered


def test_a_failing_request_ends_alone_and_the_engine_goes_on(model, monkeypatch):
    draw = RowSampler.draw

    def fail_for_seed_13(self, seen, scores):
        if self.generator.initial_seed() == 13 and seen.size(1) > 4:
            raise RuntimeError("boom")
        return draw(self, seen, scores)

    monkeypatch.setattr(RowSampler, "draw", fail_for_seed_13)
    requests = mixed_requests(seed=2, n=4)
    doomed = EngineRequest([1, 2, 3], 10, temperature=1.0, seed=13)
    engine = Engine(model)

    def raise_on_third(collector):
        if len(collector.events) == 3:
            raise ValueError("client went away")

    rude = Collector(then=raise_on_third)
    engine.submit(EngineRequest([9, 9], 12, temperature=0), rude)
    collectors = serve(engine, requests + [doomed])
    assert [c.tokens for c in collectors[:4]] == [reference_greedy(model, r) for r in requests]
    last = collectors[4].events[-1]
    assert (last.finish_reason, last.token_id, last.error) == ("error", -1, "RuntimeError: boom")
    assert len(rude.events) == 3  # its on_event raised: cancelled, no more events
    assert engine.stats()["finished"] == {"stop": 0, "length": 4, "error": 1, "cancelled": 1}


def test_encoder_decoder_models_are_refused():
    config = ModelConfig(vocab_size=VOCAB, backbone="encoder-decoder", n_layer=1, n_head=2, d_model=16,
                         context_length=16, dropout=0.0)
    with pytest.raises(LmlabError, match="encoder-decoder"):
        Engine(build_model(config))


def test_a_failing_batch_step_ends_the_running_requests_and_the_engine_serves_the_next(model, monkeypatch):
    padding = BatchCache.padding
    calls = []

    def fail_on_third_step(self, lo, hi):
        calls.append(lo)
        if len(calls) == 3:
            raise RuntimeError("step broke")
        return padding(self, lo, hi)

    monkeypatch.setattr(BatchCache, "padding", fail_on_third_step)
    engine = Engine(model)
    first = [Collector(), Collector()]
    for collector in first:
        engine.submit(EngineRequest([1, 2, 3], 10, temperature=0), collector)
    engine.start()
    for collector in first:
        assert collector.wait().events[-1].error == "RuntimeError: step broke"
    later_request = EngineRequest([4, 5], 6, temperature=0)
    later = Collector()
    engine.submit(later_request, later)
    later.wait()
    engine.stop()
    assert later.tokens == reference_greedy(model, later_request)
    assert engine.batch.used == 0
