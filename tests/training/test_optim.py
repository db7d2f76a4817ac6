"""AdamW parameter groups (what decays) and the warm-up + cosine learning-rate schedule."""

import math

import pytest
import torch
from torch import nn

from lmlab.models import ModelConfig, build_model
from lmlab.training.config import TrainConfig
from lmlab.training.optim import (
    HORIZON_KEY,
    build_optimizer,
    learning_rate,
    parameter_groups,
    recorded_horizon,
    time_horizon,
)


def decoder(**overrides) -> nn.Module:
    fields = dict(vocab_size=30, n_layer=2, n_head=2, d_model=16, context_length=8, dropout=0.0, bias=True)
    fields.update(overrides)
    return build_model(ModelConfig(**fields))


def names_by_group(model: nn.Module, groups: list[dict]) -> tuple[set[str], set[str]]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay = {name_of[id(p)] for p in groups[0]["params"]}
    no_decay = {name_of[id(p)] for p in groups[1]["params"]}
    return decay, no_decay


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_only_matrices_decay(decay_embeddings):
    model = decoder()
    groups = parameter_groups(model, 0.1, decay_embeddings)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    decay, no_decay = names_by_group(model, groups)
    assert not decay & no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}  # every parameter, once
    # The token table (30, 16) (tied to the head) and the learned positions (8, 16): no other
    # parameter has either shape, so this does not depend on the modules' names.
    embeddings = {n for n, p in model.named_parameters() if tuple(p.shape) in ((30, 16), (8, 16))}
    assert len(embeddings) == 2
    for name, param in model.named_parameters():
        if name in embeddings:
            continue
        if param.dim() >= 2:
            assert name in decay, name
        else:  # biases, norm weights and norm biases
            assert name in no_decay, name
    assert any(".bias" in n for n in no_decay) and any("norm" in n for n in no_decay)
    assert (embeddings <= decay) if decay_embeddings else (embeddings <= no_decay)


def test_tied_weight_appears_once():
    model = decoder(tie_embeddings=True)
    groups = parameter_groups(model, 0.1, True)
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))


def test_gru_embedding_follows_decay_embeddings():
    model = build_model(ModelConfig(arch="gru", vocab_size=30, n_layer=1, d_model=8, rnn_hidden=16))
    decay, no_decay = names_by_group(model, parameter_groups(model, 0.1, decay_embeddings=False))
    assert "embedding.weight" in no_decay
    assert {"gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"} <= decay
    assert {"gru.bias_ih_l0", "gru.bias_hh_l0", "head.bias"} <= no_decay


def test_frozen_parameters_are_left_out():
    model = decoder()
    frozen = [p for p in model.parameters() if p.dim() == 1][-1]
    frozen.requires_grad_(False)
    params = [p for g in parameter_groups(model, 0.1, True) for p in g["params"]]
    assert all(p is not frozen for p in params)
    assert len(params) == len(list(model.parameters())) - 1


def test_build_optimizer_uses_the_config():
    cfg = TrainConfig(lr=3e-4, beta1=0.8, beta2=0.95, weight_decay=0.05)
    optimizer = build_optimizer(decoder(), cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4 and tuple(group["betas"]) == (0.8, 0.95)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_decay_shrinks_matrices_but_not_biases():
    """One step with zero gradients: AdamW only applies decay, p ← p (1 - lr·wd)."""
    model = decoder()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, param in model.named_parameters():
        expected = 0.95 if param.dim() >= 2 else 1.0  # embeddings too: decay_embeddings defaults to true
        assert torch.allclose(param, torch.full_like(param, expected), rtol=0, atol=1e-7), name


SCHEDULE = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)


def test_warmup_is_linear():
    lrs = [learning_rate(step, SCHEDULE) for step in range(101)]
    assert 0 < lrs[0] < 2e-5
    diffs = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(diffs[0], rel=1e-9) for d in diffs)  # constant slope, up to lr
    assert lrs[100] == pytest.approx(1e-3)
    assert all(lr <= 1e-3 + 1e-15 for lr in lrs)


def test_cosine_reaches_min_lr_at_max_steps():
    assert learning_rate(100, SCHEDULE) == pytest.approx(1e-3)
    midpoint = 100 + (2000 - 100) / 2
    assert learning_rate(midpoint, SCHEDULE) == pytest.approx((1e-3 + 1e-4) / 2)
    quarter = 100 + (2000 - 100) / 4
    assert learning_rate(quarter, SCHEDULE) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert learning_rate(2000, SCHEDULE) == pytest.approx(1e-4)
    assert learning_rate(1999.999, SCHEDULE) == pytest.approx(1e-4, rel=1e-6)
    for beyond in (2001, 5000, 1e9):
        assert learning_rate(beyond, SCHEDULE) == 1e-4


def test_monotone_after_warmup():
    lrs = [learning_rate(step / 4, SCHEDULE) for step in range(100 * 4, 2100 * 4)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert min(lrs) == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3)


def test_schedule_without_warmup():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=10)
    assert learning_rate(0, cfg) == 1.0
    assert learning_rate(5, cfg) == pytest.approx(0.5)
    assert learning_rate(10, cfg) == 0.0


def test_a_horizon_ends_the_decay_but_warmup_counts_steps():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=100_000)
    assert learning_rate(4, cfg, horizon=30) == pytest.approx(5 / 11)  # still warming up
    assert learning_rate(20, cfg, horizon=30) == pytest.approx(0.5)  # half-way to the horizon: half-way down
    assert learning_rate(30, cfg, horizon=30) == 0.0
    assert learning_rate(20, cfg, horizon=200_000) == learning_rate(20, cfg)  # max_steps still ends it first


def test_time_horizon_is_the_steps_that_fit_in_the_time_left():
    cfg = TrainConfig(max_steps=1000, max_time=100.0)
    slow_start = [5.0, 5.0] + [0.5] * 8  # the first steps of a session are left out
    assert time_horizon(10, 20.0, slow_start, cfg) == 10 + 160
    assert time_horizon(10, 20.0, [0.01] * 10, cfg) == 1000  # at most max_steps
    assert time_horizon(10, 150.0, [0.5] * 10, cfg) == 10  # the budget is spent
    assert time_horizon(3, 1.0, [0.5], cfg) == 3 + 198  # too few steps to leave any out


def test_a_recorded_horizon_holds_only_for_the_budget_it_was_fixed_for():
    state = {HORIZON_KEY: {"steps": 170, "max_time": 100.0}}
    assert recorded_horizon(state, 100.0) == 170
    assert recorded_horizon(state, 200.0) is None
    assert recorded_horizon({}, 100.0) is None
    assert recorded_horizon({HORIZON_KEY: {"steps": "170", "max_time": 100.0}}, 100.0) is None
