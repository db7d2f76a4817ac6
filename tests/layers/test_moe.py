"""Mixture-of-Experts routing, capacity, auxiliary losses and utilisation."""

import copy
import math

import pytest
import torch

from lmlab.layers.feedforward import build_feedforward
from lmlab.layers.moe import (
    MoEFeedForward,
    expert_choice,
    load_balancing_loss,
    per_token_top_k,
    router_z_loss,
    token_choice,
)
from lmlab.models import ModelConfig, MoEConfig, build_model

PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])


def pairs(routing) -> set[tuple[int, int]]:
    return set(zip(routing.token.tolist(), routing.expert.tolist()))


def make_moe(num_experts=4, identical=False, **options) -> MoEFeedForward:
    torch.manual_seed(0)
    expert = build_feedforward("gelu", 8, 16)
    experts = [copy.deepcopy(expert) if identical else build_feedforward("gelu", 8, 16) for _ in range(num_experts)]
    return MoEFeedForward(experts, 8, **options)


# ----------------------------------------------------------------------------- routing
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_token_choice_picks_each_tokens_top_k(top_k):
    torch.manual_seed(0)
    probs = torch.randn(20, 5).softmax(-1)
    routing = token_choice(probs, top_k, capacity=20)
    want = {(t, e) for t in range(20) for e in probs[t].topk(top_k).indices.tolist()}
    assert pairs(routing) == want
    gates = torch.zeros(20, 5).index_put_((routing.token, routing.expert), routing.gate)
    if top_k == 1:  # Switch: the raw router probability
        torch.testing.assert_close(gates.sum(-1), probs.max(-1).values)
    else:  # renormalised over the k picks
        torch.testing.assert_close(gates.sum(-1), torch.ones(20))


def test_token_choice_capacity_serves_first_choices_first_then_drops():
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])
    routing = token_choice(probs, top_k=2, capacity=3)
    # expert 0: first choices of tokens 0, 1, 3 fill it; token 2's second choice is dropped
    # expert 1: token 2's first choice, then second choices of tokens 0 and 1; token 3's dropped
    assert pairs(routing) == {(0, 0), (1, 0), (3, 0), (2, 1), (0, 1), (1, 1)}
    counts = torch.bincount(routing.expert, minlength=2)
    assert counts.max() <= 3


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_expert_choice_never_exceeds_capacity_and_takes_each_experts_top_tokens(capacity_factor):
    torch.manual_seed(0)
    probs = torch.randn(16, 4).softmax(-1)
    capacity = math.ceil(capacity_factor * 16 / 4)
    routing = expert_choice(probs, capacity)
    counts = torch.bincount(routing.expert, minlength=4)
    assert torch.equal(counts, torch.full((4,), capacity))
    for e in range(4):
        chosen = set(routing.token[routing.expert == e].tolist())
        assert chosen == set(probs[:, e].topk(capacity).indices.tolist())
    torch.testing.assert_close(routing.gate, probs[routing.token, routing.expert])


def test_expert_choice_layer_respects_capacity():
    moe = make_moe(router="expert-choice", capacity_factor=1.0)
    x = torch.randn(2, 6, 8)
    moe(x)
    assert torch.equal(moe.load, torch.full((4,), 0.25))  # 3 tokens each


# ----------------------------------------------------------------------------- outputs
def test_identical_experts_with_top2_equal_the_dense_ffn():
    moe = make_moe(identical=True, top_k=2, drop_tokens=False)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(moe(x), moe.experts[0](x), atol=1e-6, rtol=1e-5)


def test_identical_experts_with_top1_scale_the_dense_ffn_by_the_gate():
    moe = make_moe(identical=True, top_k=1, drop_tokens=False)
    x = torch.randn(3, 5, 8)
    gate = moe.router(x).softmax(-1).max(-1).values[..., None]
    torch.testing.assert_close(moe(x), gate * moe.experts[0](x), atol=1e-6, rtol=1e-5)


def test_output_is_the_gated_sum_of_the_routed_experts():
    moe = make_moe(top_k=2, capacity_factor=0.75)  # small capacity: some tokens dropped
    x = torch.randn(2, 8, 8)
    tokens = x.reshape(-1, 8)
    routing = moe.route(moe.router(tokens).softmax(-1))
    want = torch.zeros_like(tokens)
    for t, e, g in zip(routing.token.tolist(), routing.expert.tolist(), routing.gate.tolist()):
        want[t] += g * moe.experts[e](tokens[t])
    torch.testing.assert_close(moe(x).reshape(-1, 8), want, atol=1e-6, rtol=1e-5)
    assert moe.dropped > 0


# ----------------------------------------------------------------------------- losses and utilisation
def test_load_balancing_loss_equals_hand_computed_value():
    routing = token_choice(PROBS, top_k=1, capacity=4)
    # top-1 experts 0, 0, 1, 0 → f = (0.75, 0.25); mean probabilities P = (0.65, 0.35)
    expected = 2 * (0.75 * 0.65 + 0.25 * 0.35)
    assert load_balancing_loss(routing.assigned, PROBS).item() == pytest.approx(expected)
    balanced = torch.full((6, 3), 1 / 3)
    assert load_balancing_loss(token_choice(balanced, 1, 6).assigned, balanced).item() == pytest.approx(1.0)


def test_z_loss_and_the_weighted_aux_loss():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]])
    assert router_z_loss(logits).item() == pytest.approx((math.log(4.0) ** 2 + math.log(4.0) ** 2) / 2)
    moe = make_moe(top_k=1, balance_weight=0.5, z_weight=0.25)
    x = torch.randn(2, 5, 8)
    moe(x)
    logits = moe.router(x.reshape(-1, 8))
    probs = logits.softmax(-1)
    routing = token_choice(probs, 1, capacity=10)
    want = 0.5 * load_balancing_loss(routing.assigned, probs) + 0.25 * router_z_loss(logits)
    torch.testing.assert_close(moe.aux_loss, want)


def test_the_aux_loss_trains_the_router():
    moe = make_moe(top_k=1)
    moe(torch.randn(2, 5, 8))
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0


def test_utilisation_sums_to_one_and_counts_the_computed_pairs():
    moe = make_moe(top_k=2, capacity_factor=0.5)
    x = torch.randn(4, 6, 8)
    moe(x)
    routing = moe.route(moe.router(x.reshape(-1, 8)).softmax(-1))
    counts = torch.bincount(routing.expert, minlength=4).float()
    assert moe.load.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(moe.load, counts / counts.sum())
    served = len(set(routing.token.tolist()))
    assert moe.dropped == pytest.approx(1 - served / 24)


def test_inactive_parameters_for_active_counts():
    per_expert = sum(p.numel() for p in build_feedforward("gelu", 8, 16).parameters())
    assert make_moe(top_k=1).inactive_parameters() == 3 * per_expert
    assert make_moe(top_k=2).inactive_parameters() == 2 * per_expert
    assert make_moe(router="expert-choice", capacity_factor=1.0).inactive_parameters() == 3 * per_expert


# ----------------------------------------------------------------------------- inference: no capacity, causal
def test_token_choice_drops_tokens_only_in_training():
    moe = make_moe(top_k=1, capacity_factor=0.25)
    x = torch.randn(2, 8, 8)
    moe(x)
    assert moe.dropped > 0
    moe.eval()
    unlimited = make_moe(top_k=1, drop_tokens=False).eval()
    torch.testing.assert_close(moe(x), unlimited(x))
    assert moe.dropped == 0.0


def test_expert_choice_outside_training_routes_each_token_to_its_top_experts():
    moe = make_moe(router="expert-choice", capacity_factor=2.0).eval()
    x = torch.randn(2, 6, 8)
    probs = moe.router(x.reshape(-1, 8)).softmax(-1)
    routing = moe.route(probs)
    assert pairs(routing) == {(t, e) for t in range(12) for e in probs[t].topk(2).indices.tolist()}
    torch.testing.assert_close(routing.gate, probs[routing.token, routing.expert])
    assert pairs(per_token_top_k(probs, 2)) == pairs(routing)


@pytest.mark.parametrize("capacity_factor, experts", [(0.25, 1), (1.25, 1), (2.0, 2), (9.0, 4)])
def test_expert_choice_experts_per_token_at_inference(capacity_factor, experts):
    moe = make_moe(router="expert-choice", capacity_factor=capacity_factor)
    assert moe.experts_per_token_at_inference == experts


def moe_decoder(router: str) -> torch.nn.Module:
    torch.manual_seed(0)
    moe = MoEConfig(num_experts=4, top_k=1, router=router, capacity_factor=0.5)
    config = ModelConfig(vocab_size=29, n_layer=2, n_head=2, d_model=16, context_length=16, dropout=0.0, moe=moe)
    return build_model(config).eval()


@pytest.mark.parametrize("router", ["token-choice", "expert-choice"])
def test_moe_decoder_logits_do_not_depend_on_later_tokens_or_other_sequences(router):
    model = moe_decoder(router)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 29, (4, 12), generator=generator)
    with torch.no_grad():
        logits = model(tokens)
        for t in (1, 5, 9):
            changed = tokens.clone()
            changed[:, t:] = torch.randint(0, 29, (4, 12 - t), generator=generator)
            torch.testing.assert_close(model(changed)[:, :t], logits[:, :t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(tokens[:1]), logits[:1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("router", ["token-choice", "expert-choice"])
def test_moe_decoder_cached_decoding_equals_the_full_pass_with_a_small_capacity(router):
    model = moe_decoder(router)
    tokens = torch.randint(0, 29, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(2, 8)
        steps = [model(tokens[:, t : t + 1], cache, t) for t in range(8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="top_k"):
        make_moe(top_k=5)
    with pytest.raises(ValueError, match="token-choice, expert-choice"):
        make_moe(router="hash")
