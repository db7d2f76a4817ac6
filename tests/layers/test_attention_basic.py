"""MultiHeadAttention equals a naive float64 softmax(QK^T/sqrt(d) + mask) V built from its own weights."""

import math

import pytest
import torch

from lmlab.layers.attention import MultiHeadAttention, capture_attention
from lmlab.layers.dropout import drop_mask
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.masks import build_attention_mask


def naive_attention(module: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal self-attention over x (B, T, C) written out by hand from the module's weights."""
    B, T, C = x.shape
    H, H_kv = module.n_head, module.n_kv_heads
    D = C // H
    W, b = module.qkv.weight, module.qkv.bias
    Wq, Wk, Wv = W[: H * D], W[H * D : (H + H_kv) * D], W[(H + H_kv) * D :]
    bq, bk, bv = (None, None, None) if b is None else (b[: H * D], b[H * D : (H + H_kv) * D], b[(H + H_kv) * D :])

    def project(weight, bias, heads):
        out = x @ weight.T + (0 if bias is None else bias)  # (B, T, heads*D)
        return out.view(B, T, heads, D).permute(0, 2, 1, 3)  # (B, heads, T, D)

    q, k, v = project(Wq, bq, H), project(Wk, bk, H_kv), project(Wv, bv, H_kv)
    group = H // H_kv
    mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)  # -inf above the diagonal
    heads = []
    for h in range(H):
        kv = h // group  # query head h reads key/value head h // group
        scores = q[:, h] @ k[:, kv].transpose(-1, -2) / math.sqrt(D) + mask  # (B, T, T)
        heads.append(scores.softmax(dim=-1) @ v[:, kv])  # (B, T, D)
    y = torch.cat(heads, dim=-1)  # (B, T, C), head-major like the module
    out = y @ module.out_proj.weight.T
    if module.out_proj.bias is not None:
        out = out + module.out_proj.bias
    return out


def make(n_head: int, n_kv_heads: int | None, bias: bool, d_model: int = 48) -> MultiHeadAttention:
    torch.manual_seed(0)
    module = MultiHeadAttention(d_model, n_head, n_kv_heads, bias=bias, dropout=0.0).double().eval()
    if bias:  # nn.Linear starts with non-zero biases; make sure they are exercised either way
        with torch.no_grad():
            module.qkv.bias.normal_()
            module.out_proj.bias.normal_()
    return module


SHAPES = [(4, None, True), (4, 2, True), (6, 1, False), (1, None, False), (6, 3, True)]


@pytest.mark.parametrize("n_head,n_kv_heads,bias", SHAPES)
def test_causal_output_equals_naive_float64(n_head, n_kv_heads, bias):
    module = make(n_head, n_kv_heads, bias)
    x = torch.randn(3, 11, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_attention(module, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_head,n_kv_heads,bias", SHAPES)
@pytest.mark.parametrize("split", [[4, 7], [10, 1], [3, 1, 1, 6]])
def test_cached_chunks_equal_naive_float64(n_head, n_kv_heads, bias, split):
    """Chunks after a prefix (the offset causal mask) and single tokens (no mask) both match."""
    module = make(n_head, n_kv_heads, bias)
    x = torch.randn(2, 11, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cache = KVCache(2, module.n_kv_heads, 16, module.head_dim, dtype=torch.float64)
    outputs, pos = [], 0
    with torch.no_grad():
        for size in split:
            outputs.append(module(x[:, pos : pos + size], cache, pos))
            pos += size
        torch.testing.assert_close(torch.cat(outputs, 1), naive_attention(module, x), atol=1e-10, rtol=1e-10)


def test_bad_head_counts_are_rejected():
    with pytest.raises(ValueError):
        MultiHeadAttention(48, 5)
    with pytest.raises(ValueError):
        MultiHeadAttention(48, 4, 3)


@pytest.mark.parametrize("n_head,n_kv_heads,bias", SHAPES)
def test_float32_cached_steps_match_naive_float64(n_head, n_kv_heads, bias):
    module = make(n_head, n_kv_heads, bias).float()
    x = torch.randn(2, 11, 48, generator=torch.Generator().manual_seed(3))
    cache = KVCache(2, module.n_kv_heads, 16, module.head_dim)
    outputs, pos = [], 0
    with torch.no_grad():
        for size in [3, 1, 7]:
            outputs.append(module(x[:, pos : pos + size], cache, pos))
            pos += size
        expected = naive_attention(module.double(), x.double()).float()
    torch.testing.assert_close(torch.cat(outputs, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_head,n_kv_heads", [(4, None), (6, 2)])
def test_captured_queries_keys_scores_and_weights_agree(n_head, n_kv_heads):
    """What capture_attention keeps: each query head's keys (a GQA key head repeated), scores
    q·kᵀ/√D with −inf above the diagonal, weights their softmax; the output is unchanged."""
    module = make(n_head, n_kv_heads, True)
    x = torch.randn(2, 7, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), capture_attention(module) as (layer,):
        out = module(x)
        q, k, scores, weights = layer.queries, layer.keys, layer.scores, layer.weights
    D = 48 // n_head
    assert q.shape == k.shape == (2, n_head, 7, D)
    expected = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(scores, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(weights.double(), expected.softmax(dim=-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, naive_attention(module, x), atol=1e-6, rtol=0)
    assert layer.weights is None and layer.queries is None  # released after the block


@pytest.mark.parametrize("padded", [False, True])
def test_training_dropout_on_the_cpu_drops_the_weights_with_the_layers_mask(padded):
    module = make(4, 2, True)
    module.dropout = module.resid_dropout.p = 0.25
    module.train()
    x = torch.randn(2, 6, 48, dtype=torch.float64)
    keys = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    mask = build_attention_mask(6, 6, causal=True, key_padding=keys) if padded else None
    torch.manual_seed(11)
    out = module(x, mask=mask)
    torch.manual_seed(11)  # the same draws, in the layer's order: the weights' mask, then the output's
    weights_dropped, _ = drop_mask(torch.Size([2, 4, 6, 6]), 0.25)
    output_dropped, _ = drop_mask(torch.Size([2, 6, 48]), 0.25)
    q, k, v = module.project(x)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # (B, H, T, D)
    hidden = torch.full((6, 6), float("-inf"), dtype=x.dtype).triu(1).expand(2, 1, 6, 6).clone()  # (B, 1, T, S)
    if padded:
        hidden[1, :, :, 4:] = float("-inf")
    weights = (q @ k.transpose(-1, -2) / math.sqrt(12) + hidden).softmax(dim=-1)  # (B, H, T, T)
    y = (weights.masked_fill(weights_dropped, 0.0) / 0.75) @ v  # (B, H, T, D)
    expected = module.out_proj(y.transpose(1, 2).reshape(2, 6, 48)).masked_fill(output_dropped, 0.0) / 0.75
    torch.testing.assert_close(out, expected)
