"""Attention masks (causal, key padding, prefix LM, position bias) and attention under every one of
them, against float64 references written here."""

import math

import pytest
import torch

from lmlab.layers.attention import CrossAttention, MultiHeadAttention, capture_attention
from lmlab.layers.kv_cache import CrossAttentionCache, KVCache
from lmlab.layers.masks import build_attention_mask
from lmlab.layers.positional import ALiBiPositionalEncoding, T5RelativePositionBias

B, T, C, H = 2, 6, 16, 4


# ----------------------------------------------------------------------------- references
def naive_allowed(q_len, k_len, causal, key_padding=None, prefix_lengths=None) -> torch.Tensor:
    """(B, 1, T, S) by the definition, one entry at a time."""
    batch = key_padding.size(0) if key_padding is not None else (
        prefix_lengths.size(0) if prefix_lengths is not None else 1)
    allowed = torch.zeros(batch, 1, q_len, k_len, dtype=torch.bool)
    offset = k_len - q_len
    for b in range(batch):
        for i in range(q_len):
            for j in range(k_len):
                ok = not causal or j <= offset + i or (prefix_lengths is not None and j < prefix_lengths[b])
                if key_padding is not None:
                    ok = ok and bool(key_padding[b, j])
                allowed[b, 0, i, j] = ok
    return allowed


def naive_attention(q, k, v, allowed, bias=None) -> torch.Tensor:
    """float64 softmax attention; rows with no allowed key give zeros. q (B,H,T,D), k/v (B,Hkv,S,D)."""
    q, k, v = q.double(), k.double(), v.double()
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if bias is not None:
        scores = scores + bias.double()
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)
    return weights @ v


def naive_self_attention(attn: MultiHeadAttention, x, allowed, bias=None) -> torch.Tensor:
    qkv = x.double() @ attn.qkv.weight.double().T + attn.qkv.bias.double()
    D, Hq, Hkv = attn.head_dim, attn.n_head, attn.n_kv_heads
    q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], -1)
    heads = lambda t, n: t.view(x.size(0), -1, n, D).transpose(1, 2)  # noqa: E731
    y = naive_attention(heads(q, Hq), heads(k, Hkv), heads(v, Hkv), allowed, bias)
    y = y.transpose(1, 2).reshape(x.size(0), -1, Hq * D)
    return y @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()


PADDING = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
PREFIX = torch.tensor([3, 1])

MASK_CASES = {
    "causal": dict(causal=True),
    "causal+padding": dict(causal=True, key_padding=PADDING),
    "prefix": dict(causal=True, prefix_lengths=PREFIX),
    "prefix+padding": dict(causal=True, prefix_lengths=PREFIX, key_padding=PADDING),
    "bidirectional": dict(causal=False),
    "bidirectional+padding": dict(causal=False, key_padding=PADDING),
}


@pytest.mark.parametrize("case", MASK_CASES)
def test_mask_entries_follow_their_definition(case):
    kwargs = MASK_CASES[case]
    got = build_attention_mask(T, T, **kwargs)
    if got.tensor is None:  # the fast path: SDPA's own causal flag, or no mask at all
        everything = torch.ones(T, T, dtype=torch.bool)
        got_allowed = (everything.tril() if got.is_causal else everything)[None, None]
    else:
        got_allowed = got.tensor
    want = naive_allowed(T, T, **kwargs)
    assert torch.equal(got_allowed.expand_as(want), want)


def test_plain_causal_uses_sdpa_is_causal_and_single_queries_need_no_mask():
    causal = build_attention_mask(5, 5, causal=True)
    assert causal.is_causal and causal.tensor is None
    single = build_attention_mask(1, 9, causal=True)
    assert single.tensor is None and not single.is_causal


def test_prefix_queries_see_the_whole_prefix_and_nothing_later():
    allowed = build_attention_mask(5, 5, causal=True, prefix_lengths=torch.tensor([3])).tensor[0, 0]
    assert allowed[0, :3].all() and not allowed[0, 3:].any()  # first token sees its future in the prefix
    assert allowed[3, :4].all() and not allowed[3, 4]  # after the prefix: causal
    assert allowed[4].all()


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("case", MASK_CASES)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("bias_kind", [None, "alibi", "t5"])
def test_self_attention_with_every_mask_equals_float64_reference(case, n_kv_heads, bias_kind):
    torch.manual_seed(0)
    kwargs = MASK_CASES[case]
    attn = MultiHeadAttention(C, H, n_kv_heads, bias=True).eval()
    torch.nn.init.normal_(attn.qkv.bias, std=0.1)
    x = torch.randn(B, T, C)
    bias = None
    if bias_kind == "alibi":
        bias = ALiBiPositionalEncoding(H).attention_bias(T, T)
    elif bias_kind == "t5":
        bias = T5RelativePositionBias(H, bidirectional=not kwargs["causal"]).attention_bias(T, T).detach()
    mask = build_attention_mask(T, T, position_bias=bias, **kwargs)
    got = attn(x, mask=mask)
    want = naive_self_attention(attn, x, naive_allowed(T, T, **kwargs), bias)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias_kind", [None, "alibi"])
def test_cached_queries_with_padding_equal_the_full_pass(bias_kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(C, H, 2).eval()
    x = torch.randn(B, T, C)
    alibi = ALiBiPositionalEncoding(H)

    def mask(q_len, k_len):
        bias = alibi.attention_bias(q_len, k_len) if bias_kind else None
        return build_attention_mask(q_len, k_len, causal=True, key_padding=PADDING[:, :k_len], position_bias=bias)

    full = attn(x, mask=mask(T, T))
    cache = KVCache(B, 2, T, C // H)
    first = attn(x[:, :4], cache, 0, mask(4, 4))
    rest = torch.cat([attn(x[:, t : t + 1], cache, t, mask(1, t + 1)) for t in range(4, T)], dim=1)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias_kind", [None, "t5"])
def test_fully_masked_rows_give_no_nan_forward_or_backward(bias_kind):
    torch.manual_seed(0)
    attn = MultiHeadAttention(C, H)
    x = torch.randn(B, T, C, requires_grad=True)
    left_padding = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # row 1 all padding
    bias = T5RelativePositionBias(H, bidirectional=False).attention_bias(T, T) if bias_kind else None
    mask = build_attention_mask(T, T, causal=True, key_padding=left_padding, position_bias=bias)
    y = attn(x, mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    with capture_attention(attn):
        assert torch.isfinite(attn(x, mask=mask)).all()


@pytest.mark.parametrize("case", MASK_CASES)
def test_kept_weights_path_equals_sdpa_and_rows_sum_to_one(case):
    torch.manual_seed(0)
    attn = MultiHeadAttention(C, H, 2).eval()
    x = torch.randn(B, T, C)
    mask = build_attention_mask(T, T, position_bias=ALiBiPositionalEncoding(H).attention_bias(T, T),
                                **MASK_CASES[case])
    plain = attn(x, mask=build_attention_mask(T, T, **MASK_CASES[case]))
    with capture_attention(attn) as layers:
        explicit = attn(x, mask=build_attention_mask(T, T, **MASK_CASES[case]))
        weights = layers[0].weights
        assert weights.shape == (B, H, T, T)
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))
        attn(x, mask=mask)  # with a float bias as well
        torch.testing.assert_close(layers[0].weights.sum(-1), torch.ones(B, H, T))
    torch.testing.assert_close(explicit, plain, atol=1e-5, rtol=1e-5)
    assert attn.weights is None and not attn.keep_weights


def test_default_mask_is_causal():
    torch.manual_seed(0)
    attn = MultiHeadAttention(C, H).eval()
    x = torch.randn(B, T, C)
    no_padding = torch.ones(B, T, dtype=torch.bool)
    torch.testing.assert_close(attn(x), attn(x, mask=build_attention_mask(T, T, causal=True, key_padding=no_padding)))


# ----------------------------------------------------------------------------- cross-attention
@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_cross_attention_equals_reference_and_caches_memory(n_kv_heads):
    torch.manual_seed(0)
    attn = CrossAttention(C, H, n_kv_heads).eval()
    x, memory = torch.randn(B, 3, C), torch.randn(B, 5, C)
    padding = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    got = attn(x, memory, build_attention_mask(3, 5, causal=False, key_padding=padding))

    D = C // H
    q = (x.double() @ attn.q_proj.weight.double().T + attn.q_proj.bias.double()).view(B, 3, H, D).transpose(1, 2)
    kv = memory.double() @ attn.kv_proj.weight.double().T + attn.kv_proj.bias.double()
    k, v = (t.view(B, 5, n_kv_heads, D).transpose(1, 2) for t in kv.chunk(2, -1))
    y = naive_attention(q, k, v, naive_allowed(3, 5, False, padding)).transpose(1, 2).reshape(B, 3, C)
    want = y @ attn.out_proj.weight.double().T + attn.out_proj.bias.double()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-4)

    cache = CrossAttentionCache()
    mask = build_attention_mask(1, 5, causal=False, key_padding=padding)
    steps = [attn(x[:, t : t + 1], memory if t == 0 else torch.full_like(memory, float("nan")), mask, cache)
             for t in range(3)]  # later calls must not even look at memory
    torch.testing.assert_close(torch.cat(steps, 1), got, atol=1e-6, rtol=1e-5)
