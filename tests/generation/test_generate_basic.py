"""Decoding: cached greedy equals a naive loop, processors equal Hugging Face's, sampling, limits."""

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate, stream_tokens, top_k_filter, top_p_filter
from lmlab.generation import Sampling
from lmlab.generation.processors import apply_temperature
from lmlab.models import ModelConfig, build_model

VOCAB, CONTEXT = 29, 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_heads=2, d_model=32,
                         context_length=CONTEXT, dropout=0.0)
    model = build_model(config).eval()
    with torch.no_grad():  # larger weights: sharper logits than the GPT-2 init, so no near-ties
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.3)
    return model


def naive_greedy(model, prompt, n):
    history = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([history]))  # the whole history, no cache
            history.append(int(logits[0, -1].argmax()))
    return history[len(prompt):]


@pytest.mark.parametrize("prompt", [[3], [1, 2, 3, 4, 5], list(range(10))])
def test_cached_greedy_equals_naive_argmax_loop(model, prompt):
    n = CONTEXT - len(prompt)  # up to a full context
    out = generate(model, prompt, GenerationConfig(max_new_tokens=n, strategy="greedy"))
    assert out == naive_greedy(model, prompt, n)


def test_generate_and_stream_agree(model):
    config = GenerationConfig(max_new_tokens=10, strategy="sample", seed=3)
    assert list(stream_tokens(model, [1, 2], config)) == generate(model, [1, 2], config)


def test_zero_new_tokens(model):
    assert generate(model, [1, 2], GenerationConfig(max_new_tokens=0)) == []


def random_logits(seed=0, batch=4, vocab=50):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("k", [1, 2, 10, 49, 50, 80])
def test_top_k_equals_transformers(k):
    logits = random_logits(k)
    expected = TopKLogitsWarper(top_k=k)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    assert torch.equal(top_k_filter(logits, k), expected)


@pytest.mark.parametrize("p", [0.01, 0.3, 0.5, 0.9, 0.95, 1.0])
def test_top_p_equals_transformers(p):
    for seed in range(5):
        logits = random_logits(seed)
        expected = TopPLogitsWarper(top_p=p)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        assert torch.equal(top_p_filter(logits, p), expected), (p, seed)


def test_top_p_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, -1.0, -2.0]])
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 1.5, 10.0])
def test_temperature_equals_transformers(t):
    logits = random_logits(1)
    expected = TemperatureLogitsWarper(temperature=t)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    torch.testing.assert_close(apply_temperature(logits, t), expected, atol=0, rtol=0)


def test_sampling_never_picks_filtered_tokens():
    logits = random_logits(2, batch=1, vocab=30).expand(2000, 30)
    gen = torch.Generator().manual_seed(0)
    config = GenerationConfig(strategy="sample", top_k=3)
    picks = Sampling().choose(logits, torch.zeros(2000, 0, dtype=torch.long), Sampling().pipeline(config, 0), gen)
    assert set(picks.tolist()) == set(logits[0].topk(3).indices.tolist())


def test_seeded_sampling_is_reproducible(model):
    config = GenerationConfig(max_new_tokens=30, strategy="sample", temperature=1.3, seed=42)
    first = generate(model, [1, 2, 3], config)
    assert generate(model, [1, 2, 3], config) == first
    other = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=30, strategy="sample", temperature=1.3, seed=43))
    assert other != first
    assert len(first) == 30 and all(0 <= t < VOCAB for t in first)


def test_top_k_one_sampling_is_greedy(model):
    sampled = generate(model, [4, 5], GenerationConfig(max_new_tokens=12, strategy="sample", top_k=1, seed=0))
    assert sampled == generate(model, [4, 5], GenerationConfig(max_new_tokens=12, strategy="greedy"))


def test_prompt_longer_than_context_is_an_error(model):
    for length in (CONTEXT, CONTEXT + 5):  # a full context leaves no room for a new token
        with pytest.raises(LmlabError, match="truncate") as info:
            generate(model, list(range(length)), GenerationConfig(max_new_tokens=3))
        assert "\n" not in str(info.value)


def test_truncate_keeps_the_end_of_the_prompt(model):
    prompt = [i % VOCAB for i in range(40)]
    config = GenerationConfig(max_new_tokens=1, strategy="greedy", prompt_overflow="truncate")
    assert generate(model, prompt, config) == naive_greedy(model, prompt[-(CONTEXT - 1):], 1)


def test_a_one_position_context_cannot_generate():
    tiny = build_model(ModelConfig(vocab_size=5, n_layer=1, n_head=1, d_model=4, context_length=1)).eval()
    for policy in ("error", "truncate"):
        with pytest.raises(LmlabError):
            generate(tiny, [1, 2], GenerationConfig(max_new_tokens=1, prompt_overflow=policy))


def test_generation_beyond_the_context_length(model):
    prompt = [1, 2, 3]
    n = 3 * CONTEXT + 7
    out = generate(model, prompt, GenerationConfig(max_new_tokens=n, strategy="greedy"))
    assert len(out) == n and all(0 <= t < VOCAB for t in out)
    fits = CONTEXT - len(prompt)
    assert out[:fits] == naive_greedy(model, prompt, fits)  # identical while everything fits
    sampled = generate(model, prompt, GenerationConfig(max_new_tokens=n, strategy="sample", seed=1))
    assert len(sampled) == n


def sliding_window_greedy(model, prompt, n):
    """Reference for the documented policy: once the context is full, keep its last half."""
    history, window = list(prompt), list(prompt)
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([window]))[0, -1].argmax())
            history.append(token)
            window.append(token)
            if len(window) > CONTEXT:
                window = history[-(CONTEXT // 2):]
    return history[len(prompt):]


def test_sliding_window_matches_its_reference(model):
    prompt = [7, 8]
    n = 2 * CONTEXT + 5
    out = generate(model, prompt, GenerationConfig(max_new_tokens=n, strategy="greedy"))
    assert out == sliding_window_greedy(model, prompt, n)


@pytest.mark.parametrize(
    "settings,words",
    [
        (dict(strategy="sample", temperature=0.0), ["temperature", "greedy"]),
        (dict(strategy="sample", temperature=-1.0), ["temperature"]),
        (dict(strategy="sample", top_p=1.5), ["top-p"]),
        (dict(strategy="sample", top_p=0.0), ["top-p"]),
        (dict(strategy="sample", top_k=0), ["top-k"]),
        (dict(strategy="beam-me-up"), ["greedy", "sample"]),
        (dict(max_new_tokens=-1), ["max-new-tokens"]),
        (dict(prompt_overflow="wrap"), ["error", "truncate"]),
        (dict(strategy="sample", temperature=float("nan")), ["temperature", "finite"]),
        (dict(strategy="greedy", temperature=float("nan")), ["temperature", "finite"]),
        (dict(strategy="sample", top_p=float("nan")), ["top-p", "finite"]),
        (dict(strategy="sample", min_p=float("nan")), ["min-p", "finite"]),
        (dict(strategy="beam", num_beams=2, length_penalty=float("nan")), ["length-penalty", "finite"]),
        (dict(strategy="beam", num_beams=2, length_penalty=float("inf")), ["length-penalty", "finite"]),
    ],
)
def test_impossible_settings_are_errors(model, settings, words):
    with pytest.raises(LmlabError) as info:
        generate(model, [1], GenerationConfig(**settings))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_empty_prompt_is_an_error(model):
    with pytest.raises(LmlabError, match="empty"):
        generate(model, [], GenerationConfig(max_new_tokens=2))


def test_greedy_ignores_sampling_settings(model):
    out = generate(model, [1], GenerationConfig(max_new_tokens=4, strategy="greedy", temperature=0.0))
    assert len(out) == 4


def test_every_strategy_name_has_its_strategy_object():
    from lmlab.generation import STRATEGIES, BeamSearch, Greedy, Sampling
    from lmlab.generation.config import STRATEGY_NAMES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
    assert [type(s) for s in STRATEGIES.values()] == [Greedy, Sampling, BeamSearch]
