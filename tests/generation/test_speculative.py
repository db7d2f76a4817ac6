"""Speculative greedy decoding: the same tokens as plain greedy decoding, whatever the draft does."""

import dataclasses

import pytest
import torch

from lmlab.generation import GenerationConfig, Greedy, generate, generate_batch
from lmlab.generation import speculative, strategies
from lmlab.generation.fast import fast_path
from lmlab.generation.fast.draft import Int8Draft
from lmlab.generation.session import DecoderSession
from lmlab.generation.speculative import can_speculate
from lmlab.kernels import load_native
from lmlab.models import ModelConfig, build_model

pytestmark = pytest.mark.skipif(load_native() is None, reason="the native kernel cannot be built here")

VOCAB = 300


@pytest.fixture()
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=64, context_length=96, dropout=0.0)
    model = build_model(config).eval()
    with torch.no_grad():  # sharper logits than the GPT-2 init: the draft mostly agrees, sometimes not
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.15)
    return model


def plain(config: GenerationConfig) -> GenerationConfig:
    return dataclasses.replace(config, draft_tokens=0)


@pytest.mark.parametrize("draft_tokens", [1, 3, 7])
@pytest.mark.parametrize("max_new_tokens", [0, 1, 2, 9, 40])
def test_same_tokens_as_plain_greedy(model, draft_tokens, max_new_tokens):
    prompt = [5, 17, 2, 99]
    config = GenerationConfig(max_new_tokens=max_new_tokens, strategy="greedy", draft_tokens=draft_tokens)
    want = generate_batch(model, [prompt], plain(config)).sequences[0]
    assert len(want) == max_new_tokens
    assert generate_batch(model, [prompt], config).sequences[0] == want
    assert generate(model, prompt, config) == want  # the streaming path


def test_a_draft_that_is_always_wrong_changes_nothing(model, monkeypatch):
    config = GenerationConfig(max_new_tokens=30, strategy="greedy", draft_tokens=4)
    want = generate(model, [1, 2, 3], plain(config))
    checked = []
    original_run = DecoderSession.run

    def run(self, tokens):
        checked.append(tokens.size(1))
        return original_run(self, tokens)

    monkeypatch.setattr(Int8Draft, "propose", lambda self, session, token, k, choose, uniform: [(int(token) + 1) % VOCAB] * k)
    monkeypatch.setattr(DecoderSession, "run", run)
    assert generate(model, [1, 2, 3], config) == want
    assert checked and max(checked) == 5  # the token and four proposals, checked at once


def test_stops_after_eos_inside_the_accepted_proposals(model):
    prompt = [7, 8, 9]
    long = generate(model, prompt, GenerationConfig(max_new_tokens=30, strategy="greedy", draft_tokens=0))
    eos = long[5]
    config = GenerationConfig(max_new_tokens=30, strategy="greedy", draft_tokens=6, eos_ids=(eos,))
    want = generate(model, prompt, plain(config))
    assert want[-1] == eos and len(want) <= 6
    assert generate(model, prompt, config) == want
    assert generate_batch(model, [prompt], config).sequences[0] == want


def test_the_draft_mostly_agrees(model, monkeypatch):
    agreed = []
    original = speculative.speculative_decode

    def counting(session, strategy, config, generator=None):
        for token in original(session, strategy, config, generator):
            agreed.append(session.position)
            yield token

    monkeypatch.setattr(strategies, "speculative_decode", counting)
    config = GenerationConfig(max_new_tokens=60, strategy="greedy", draft_tokens=6)
    session = DecoderSession(model, torch.tensor([[3, 4, 5]]), None, 60, 1)
    produced = list(strategies.speculative_decode(session, Greedy(), config))
    checks = len(set(agreed))  # positions only move at a check
    assert len(produced) == 60 and checks < 60 / 2  # fewer float32 passes than tokens


def test_when_it_applies(model):
    one = DecoderSession(model, torch.tensor([[1, 2]]), None, 5, 1)
    greedy = GenerationConfig(max_new_tokens=5, strategy="greedy")
    assert can_speculate(one, greedy)
    assert not can_speculate(one, plain(greedy))
    assert not can_speculate(one, GenerationConfig(max_new_tokens=5, strategy="greedy", repetition_penalty=1.3))
    assert not can_speculate(DecoderSession(model, torch.tensor([[1, 2], [3, 4]]), None, 5, 1), greedy)
    padded = DecoderSession(model, torch.tensor([[0, 2], [3, 4]]), torch.tensor([[False, True], [True, True]]), 5, 1)
    assert not can_speculate(padded, greedy)
    assert can_speculate(one, GenerationConfig(max_new_tokens=5, strategy="sample", top_p=0.9))
    hooked = model.lm_head.register_forward_hook(lambda module, args, output: None)
    assert not can_speculate(DecoderSession(model, torch.tensor([[1, 2]]), None, 5, 1), greedy)  # plain modules
    hooked.remove()


def test_draft_is_cached_and_rebuilt_after_the_weights_change(model):
    draft = fast_path(model).draft()
    assert fast_path(model).draft() is draft
    with torch.no_grad():
        model.backbone.blocks[0].ffn.up.weight.mul_(1.5)
    assert fast_path(model).draft() is not draft


def test_draft_tokens_must_leave_room_in_one_check():
    from lmlab.errors import LmlabError

    with pytest.raises(LmlabError, match="draft-tokens"):
        GenerationConfig(draft_tokens=8).validate()
    with pytest.raises(LmlabError, match="draft-tokens"):
        GenerationConfig(draft_tokens=-1).validate()


@pytest.mark.parametrize("settings", [
    dict(top_k=20, temperature=0.8),
    dict(top_p=0.9),
    dict(top_k=40, top_p=0.8, min_p=0.05, temperature=1.3),
    dict(),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_gives_the_same_tokens_as_plain_sampling(model, settings, seed):
    config = GenerationConfig(max_new_tokens=40, strategy="sample", seed=seed, draft_tokens=5, **settings)
    want = generate(model, [4, 9, 16], plain(config))
    assert generate(model, [4, 9, 16], config) == want
    assert generate_batch(model, [[4, 9, 16]], config).sequences[0] == want
