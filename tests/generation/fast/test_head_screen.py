"""The int8-screened LM head: its error bound holds, and the top logits it returns are exactly the
float32 head's, so greedy and top-k decoding choose the same tokens with and without it."""

import pytest
import torch

from lmlab.generation import GenerationConfig, generate, generate_batch, strategy_for
from lmlab.generation.fast import ScreenedHead, fast_path
from lmlab.generation.loop import decode
from lmlab.generation.session import DecoderSession
from lmlab.kernels import MAX_ROWS, load_native
from lmlab.models import ModelConfig, build_model

pytestmark = pytest.mark.skipif(load_native() is None, reason="the native kernel cannot be built here")

VOCAB, HIDDEN = 3000, 64


def random_head(seed: int) -> torch.Tensor:
    """(V, C) rows of very different scales, a zero row, an outlier element and a duplicated row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, HIDDEN, generator=g) * torch.rand(VOCAB, 1, generator=g).mul(3).exp() * 0.02
    w[7] = 0.0
    w[11, 5] = 4.0
    w[20] = w[19]
    return w


def hidden_states(seed: int, rows: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, HIDDEN, generator=g) * (1 + 10 * torch.rand(rows, 1, generator=g))


@pytest.mark.parametrize("seed", range(6))
def test_error_bound_holds(seed):
    w = random_head(seed)
    screen = ScreenedHead(w)
    h = hidden_states(seed, rows=3)
    approx, bound = screen.approximate(h)
    exact = h.double() @ w.double().t()
    assert ((exact - approx.double()).abs() <= bound.double()).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_logits_are_the_exact_top_k(seed, k):
    w = random_head(seed)
    h = hidden_states(100 + seed, rows=2)
    logits = ScreenedHead(w).top_logits(h, k)
    full = h @ w.t()  # (B, V)
    assert logits is not None
    best = full.topk(k, dim=1)
    got = logits.topk(k, dim=1)
    assert torch.equal(got.indices.sort(dim=1).values, best.indices.sort(dim=1).values)
    torch.testing.assert_close(got.values, best.values, rtol=1e-5, atol=1e-6)
    assert torch.equal(logits.argmax(dim=1), full.argmax(dim=1))


def test_near_ties_are_resolved_exactly():
    w = random_head(0)
    h = hidden_states(1)
    winner = int((h @ w.t()).argmax())
    w[winner + 1] = w[winner]
    w[winner + 1, 0] += 1e-4 * torch.sign(h[0, 0])  # a hair better than the former winner
    logits = ScreenedHead(w).top_logits(h, 1)
    assert int(logits.argmax()) == winner + 1 == int((h @ w.t()).argmax())


def test_gives_up_when_everything_is_close_or_the_batch_is_large():
    flat = torch.ones(VOCAB, HIDDEN) * 0.01  # every logit equal: every token a candidate
    assert ScreenedHead(flat).top_logits(torch.randn(1, HIDDEN), 1) is None
    assert ScreenedHead(random_head(0)).top_logits(torch.randn(MAX_ROWS + 1, HIDDEN), 1) is None


@pytest.fixture()
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=HIDDEN, context_length=64, dropout=0.0)
    return build_model(config).eval()


def test_model_screen_is_cached_and_rebuilt_after_the_weights_change(model):
    first = fast_path(model).screen()
    assert first is not None and fast_path(model).screen() is first
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    assert fast_path(model).screen() is not first
    assert fast_path(model.to(torch.bfloat16)).screen() is None


def unscreened(model, prompts, config):
    """The same decoding with every logit computed (no screen)."""
    session = DecoderSession(model, torch.tensor(prompts), None, config.max_new_tokens, top_logits=None)
    assert session.screen is None
    return decode(session, strategy_for(config), torch.tensor(prompts), config, 0, len(prompts)).sequences


@pytest.mark.parametrize("config", [
    GenerationConfig(max_new_tokens=40, strategy="greedy"),
    GenerationConfig(max_new_tokens=40, strategy="sample", top_k=20, top_p=0.9, temperature=0.7, seed=4),
])
def test_decoding_with_the_screen_equals_decoding_without(model, config):
    prompts = [[5, 9, 2, 7], [1, 2, 3, 4]]
    session = DecoderSession(model, torch.tensor(prompts), None, config.max_new_tokens, strategy_for(config).decisive_logits(config))
    assert session.screen is not None
    assert generate_batch(model, prompts, config).sequences == unscreened(model, prompts, config)
    assert generate(model, prompts[0], config) == unscreened(model, prompts[:1], config)[0]


def decisive(**settings):
    config = GenerationConfig(**settings)
    return strategy_for(config).decisive_logits(config)


def test_decisive_logits():
    assert decisive(strategy="greedy") == 1
    assert decisive(strategy="sample", top_k=50) == 50
    assert decisive(strategy="sample") is None
    assert decisive(strategy="beam", num_beams=2) is None
    assert decisive(strategy="greedy", repetition_penalty=1.2) is None
    assert decisive(strategy="greedy", no_repeat_ngram_size=2) is None
    assert decisive(strategy="greedy", min_new_tokens=3, eos_ids=(1,)) is None
