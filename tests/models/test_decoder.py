"""Decoder-only Transformer: causality, cached decoding, GPT-2 init, weight tying, parameter count."""

import math

import pytest
import torch

from lmlab.models import ModelConfig, build_model, count_parameters


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=37, n_layer=2, n_head=4, d_model=32, context_length=24, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def random_ids(batch: int, length: int, vocab: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=[None, 2, 1], ids=["mha", "gqa", "mqa"])
def model(request):
    torch.manual_seed(0)
    return build_model(tiny(n_kv_heads=request.param)).eval()


def test_logits_shape(model):
    ids = random_ids(3, 10)
    assert model(ids).shape == (3, 10, 37)
    assert model.max_positions == 24


@pytest.mark.parametrize("cut", [1, 5, 11, 23])
def test_future_tokens_never_change_earlier_logits(model, cut):
    ids = random_ids(2, 24, seed=1)
    changed = ids.clone()
    changed[:, cut:] = random_ids(2, 24 - cut, seed=2)
    assert not torch.equal(ids[:, cut:], changed[:, cut:])
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(after[:, :cut], before[:, :cut], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, cut:], before[:, cut:])  # the change is seen later on


@torch.no_grad()
def test_prefill_then_one_token_at_a_time_equals_full_pass(model):
    ids = random_ids(2, 24, seed=3)
    full = model(ids)
    cache = model.new_cache(2, 24)
    steps = [model(ids[:, :7], cache, 0)]
    for pos in range(7, 24):
        steps.append(model(ids[:, pos : pos + 1], cache, pos))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunks", [[5, 5, 5, 9], [1, 10, 13], [24]])
@torch.no_grad()
def test_chunked_decoding_equals_full_pass(model, chunks):
    ids = random_ids(2, 24, seed=4)
    full = model(ids)
    cache = model.new_cache(2, 24)
    outputs, pos = [], 0
    for size in chunks:
        outputs.append(model(ids[:, pos : pos + size], cache, pos))
        pos += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_a_cache_can_be_refilled_from_position_zero(model):
    """Prefilling a used cache again (as the sliding window does) forgets the old contents."""
    first, second = random_ids(1, 20, seed=5), random_ids(1, 12, seed=6)
    cache = model.new_cache(1)
    model(first, cache, 0)
    out = [model(second[:, :8], cache, 0)]
    for pos in range(8, 12):
        out.append(model(second[:, pos : pos + 1], cache, pos))
    torch.testing.assert_close(torch.cat(out, dim=1), model(second), atol=1e-5, rtol=0)


def test_gpt2_initialisation_statistics():
    torch.manual_seed(0)
    n_layer = 4
    model = build_model(tiny(n_layer=n_layer, d_model=128, n_head=4, vocab_size=500, bias=True))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    seen = {"residual": 0, "other": 0}
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        elif param.dim() == 2:
            residual = name.endswith("out_proj.weight") or name.endswith("down.weight")
            expected = residual_std if residual else 0.02
            seen["residual" if residual else "other"] += 1
            assert param.mean().abs() < 0.1 * expected, name
            assert param.std().item() == pytest.approx(expected, rel=0.05), name
        else:  # norm weights
            assert torch.all(param == 1), name
    assert seen["residual"] == 2 * n_layer  # attention output + FFN down projection per block
    assert seen["other"] >= 2 + 2 * n_layer  # embeddings, qkv and FFN up projections


def test_tied_head_shares_storage_with_embedding():
    model = build_model(tiny())
    head, embedding = model.lm_head.weight, model.backbone.tok_emb.weight
    assert head is embedding
    assert head.data_ptr() == embedding.data_ptr()
    with torch.no_grad():
        embedding[3, 5] = 42.0
    assert head[3, 5] == 42.0
    assert sum(1 for p in model.parameters() if p is embedding) == 1


def test_untied_head_has_its_own_weight():
    model = build_model(tiny(tie_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.backbone.tok_emb.weight.data_ptr()
    tied = count_parameters(build_model(tiny()))
    assert count_parameters(model) == tied + 37 * 32


def test_nanogpt_cpu_parameter_count():
    """nanoGPT's CPU Shakespeare shape: 4 layers, 4 heads, 128 dims, context 64, vocab 65, no bias."""
    V, T, C, L = 65, 64, 128, 4
    ffn = 4 * C
    per_block = (
        C  # attention LayerNorm weight (no bias)
        + C * 3 * C  # fused q, k, v projection
        + C * C  # attention output projection
        + C  # FFN LayerNorm weight
        + C * ffn  # FFN up
        + ffn * C  # FFN down
    )
    expected = V * C + T * C + L * per_block + C  # token emb (tied head) + positions + blocks + final norm
    assert expected == 804_096
    config = ModelConfig(vocab_size=V, n_layer=L, n_head=4, d_model=C, context_length=T, dropout=0.0, bias=False)
    assert count_parameters(build_model(config)) == expected


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model(tiny(dropout=0.5))
    ids = random_ids(2, 10)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), model(ids))
