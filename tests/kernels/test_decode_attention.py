"""The native cache-attention kernel against float64 attention, and where it declines."""

import math

import pytest
import torch

from lmlab.kernels import decode_attention, load_native, native_status

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def reference(q, keys, values, start, rows=None, allowed=None):
    """float64 softmax attention of q (B, H, T, D) over positions [0, start+T) → (B, T, H, D)."""
    B, H, T, D = q.shape
    S = start + T
    positions = torch.arange(S)
    table = torch.arange(B)[:, None].expand(B, S) if rows is None else rows[:, :S].long()
    k = keys[table, :, positions].permute(0, 2, 1, 3).double()  # (B, H_kv, S, D)
    v = values[table, :, positions].permute(0, 2, 1, 3).double()
    group = H // keys.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = q.double() @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if allowed is None:
        allowed = positions[None, :] <= torch.arange(start, S)[:, None]  # (T, S) causal
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)  # rows that see no key: zeros
    return (weights @ v).transpose(1, 2).float()


def random_cache(B, H_kv, S_max, D, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H_kv, S_max, D, generator=g), torch.randn(B, H_kv, S_max, D, generator=g)


def attend(q, keys, values, start, rows=None, allowed=None):
    """The kernel with the new keys/values (B, H_kv, T, D) taken from the cache's own rows at
    [start, start+T), overwritten by the kernel with themselves."""
    T = q.size(2)
    k, v = keys[:, :, start:start + T].clone(), values[:, :, start:start + T].clone()
    return decode_attention(q, k, v, keys, values, start, rows, allowed)


@native
@pytest.mark.parametrize("T", [1, 2, 5, 8])
@pytest.mark.parametrize("start", [0, 1, 37])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (3, 1)])
def test_causal_attention_matches_float64(T, start, heads, kv_heads):
    B, D = 3, 16
    keys, values = random_cache(B, kv_heads, 48, D, seed=T + start)
    q = torch.randn(B, heads, T, D, generator=torch.Generator().manual_seed(heads))
    got = attend(q, keys, values, start)
    assert got is not None and got.shape == (B, T, heads, D)
    torch.testing.assert_close(got, reference(q, keys, values, start), rtol=1e-5, atol=1e-5)


@native
def test_rows_table_reads_each_position_from_its_row():
    B, H, D, start = 4, 3, 8, 20
    keys, values = random_cache(B, H, 32, D, seed=1)
    rows = torch.randint(0, B, (B, 32), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    q = torch.randn(B, H, 1, D)
    got = attend(q, keys, values, start, rows=rows)
    torch.testing.assert_close(got, reference(q, keys, values, start, rows=rows), rtol=1e-5, atol=1e-5)


@native
@pytest.mark.parametrize("per_row", [True, False])
def test_boolean_mask_and_a_query_that_sees_nothing(per_row):
    B, H, T, D, start = 3, 2, 2, 8, 9
    keys, values = random_cache(B, H, 16, D, seed=3)
    allowed = torch.rand(B if per_row else 1, 1, T, start + T, generator=torch.Generator().manual_seed(4)) > 0.4
    allowed[0, 0, 1] = False  # query 1 of the first row may see no key
    q = torch.randn(B, H, T, D)
    got = attend(q, keys, values, start, allowed=allowed)
    torch.testing.assert_close(got, reference(q, keys, values, start, allowed=allowed), rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, 1][0 if per_row else slice(None)], torch.zeros_like(got[:, 1][0 if per_row else slice(None)]))


@native
def test_strided_queries_are_read_in_place():
    B, H, T, D = 2, 4, 3, 8
    keys, values = random_cache(B, H, 12, D, seed=5)
    fused = torch.randn(B, T, 3 * H * D)  # a qkv projection's output; q is its first third
    q = fused[..., : H * D].view(B, T, H, D).transpose(1, 2)  # (B, H, T, D), not contiguous
    got = attend(q, keys, values, 4)
    torch.testing.assert_close(got, reference(q.contiguous(), keys, values, 4), rtol=1e-5, atol=1e-5)


@native
def test_new_keys_and_values_are_written_to_each_rows_own_buffer_row():
    B, H, T, D, start = 2, 4, 3, 8, 5
    keys, values = torch.zeros(B, 2, 12, D), torch.zeros(B, 2, 12, D)
    fused = torch.randn(B, T, (H + 4) * D)  # a fused q|k|v projection (GQA: 2 key/value heads)
    q = fused[..., : H * D].view(B, T, H, D).transpose(1, 2)
    k = fused[..., H * D : (H + 2) * D].view(B, T, 2, D).transpose(1, 2)
    v = fused[..., (H + 2) * D :].view(B, T, 2, D).transpose(1, 2)
    rows = torch.tensor([[1] * 12, [0] * 12], dtype=torch.int32)  # each row reads the other's past, yet writes its own
    got = decode_attention(q, k, v, keys, values, start, rows=rows)
    assert got is not None
    assert torch.equal(keys[:, :, start:start + T], k) and torch.equal(values[:, :, start:start + T], v)
    assert keys[:, :, :start].abs().sum() == 0 and keys[:, :, start + T:].abs().sum() == 0


def test_declines_what_it_does_not_take():
    keys, values = random_cache(2, 2, 16, 8, seed=6)
    q, k = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    before = keys.clone()
    assert decode_attention(q.bfloat16(), k.bfloat16(), k.bfloat16(), keys.bfloat16(), values.bfloat16(), 3) is None
    assert decode_attention(torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8), keys, values, 3) is None
    assert decode_attention(q, k, k, keys, values, 16) is None  # past the buffer
    assert decode_attention(q, k, k, keys[:, :, :8], values[:, :, :8], 3) is None  # not a whole buffer
    assert decode_attention(q, k, k, keys, values, 3, allowed=torch.zeros(2, 1, 1, 4)) is None  # additive mask
    assert decode_attention(q.requires_grad_(), k, k, keys, values, 3) is None
    assert torch.equal(keys, before)  # nothing written
