"""Positional encodings against float64 references written here and against transformers."""

import math

import pytest
import torch

from lmlab.layers.positional import (
    ALiBiPositionalEncoding,
    LearnedPositionalEmbedding,
    PositionalEncoding,
    RotaryPositionalEncoding,
    SinusoidalPositionalEncoding,
    T5RelativePositionBias,
    alibi_slopes,
    t5_relative_bucket,
)


# ----------------------------------------------------------------------------- references
def naive_rope(x: torch.Tensor, positions: torch.Tensor, base: float, rot_dim: int) -> torch.Tensor:
    """Rotate pairs (i, i + r/2) of x (..., T, D) by angle pos · base^(-2i/r), in float64."""
    x = x.double()
    out = x.clone()
    half = rot_dim // 2
    for i in range(half):
        theta = positions.double() * base ** (-2 * i / rot_dim)  # (T,)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * torch.cos(theta) - b * torch.sin(theta)
        out[..., i + half] = b * torch.cos(theta) + a * torch.sin(theta)
    return out


def naive_sinusoids(length: int, d: int) -> torch.Tensor:
    table = torch.zeros(length, d, dtype=torch.float64)
    for pos in range(length):
        for i in range(0, d, 2):
            table[pos, i] = math.sin(pos / 10000 ** (i / d))
            if i + 1 < d:
                table[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    return table


def press_slopes(n: int) -> list[float]:
    """The reference ``get_slopes`` from the ALiBi repository (ofirpress/attention_with_linear_biases)."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + press_slopes(2 * closest)[0::2][: n - closest]


# ----------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_rope_matches_float64_reference(fraction):
    torch.manual_seed(0)
    head_dim, base = 16, 500.0
    rope = RotaryPositionalEncoding(head_dim, max_len=8, base=base, fraction=fraction)
    x = torch.randn(2, 3, 5, head_dim)
    got = rope.rotary(3, 5)(x)
    want = naive_rope(x, torch.arange(3, 8), base, int(head_dim * fraction))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_rope_beyond_the_precomputed_table_continues_it():
    rope = RotaryPositionalEncoding(8, max_len=4)
    long = RotaryPositionalEncoding(8, max_len=16)
    x = torch.randn(1, 1, 6, 8)
    torch.testing.assert_close(rope.rotary(2, 6)(x), long.rotary(2, 6)(x))


def test_rope_matches_llama_rotary():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, max_position_embeddings=32, rope_theta=1000.0)
    q, k = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    cos, sin = LlamaRotaryEmbedding(config)(q, torch.arange(7)[None].expand(2, -1))
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    rotary = RotaryPositionalEncoding(16, max_len=32, base=1000.0).rotary(0, 7)
    torch.testing.assert_close(rotary(q), want_q)
    torch.testing.assert_close(rotary(k), want_k)


def test_partial_rope_matches_gpt_neox():
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding, apply_rotary_pos_emb

    torch.manual_seed(0)
    config = GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10000)
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 4, 6, 16)
    cos, sin = GPTNeoXRotaryEmbedding(config)(q, torch.arange(6)[None])
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    rotary = RotaryPositionalEncoding(16, max_len=8, fraction=0.25).rotary(0, 6)
    torch.testing.assert_close(rotary(q), want_q)
    torch.testing.assert_close(rotary(k), want_k)


def test_rope_scores_depend_only_on_relative_distance():
    torch.manual_seed(0)
    rope = RotaryPositionalEncoding(16, max_len=64)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> torch.Tensor:
        rq = rope.rotary(m, 1)(q.view(1, 1, 1, 16))
        rk = rope.rotary(n, 1)(k.view(1, 1, 1, 16))
        return (rq * rk).sum()

    for distance in (0, 3, 11):
        scores = torch.stack([score(m + distance, m) for m in (0, 5, 20, 40)])
        torch.testing.assert_close(scores, scores[0].expand(4), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(3, 0), score(9, 0))


# ----------------------------------------------------------------------------- absolute
def test_sinusoidal_matches_vaswani_formula_and_extrapolates():
    d = 10
    enc = SinusoidalPositionalEncoding(max_len=6, d_model=d)
    x = torch.zeros(1, 9, d)
    got = enc.embed(x, 0)[0]  # past the 6 precomputed positions
    torch.testing.assert_close(got.double(), naive_sinusoids(9, d), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.embed(x[:, :3], 4)[0], got[4:7])


def test_learned_positions_add_their_rows_and_refuse_beyond_max_len():
    enc = LearnedPositionalEmbedding(max_len=5, d_model=3)
    x = torch.randn(2, 2, 3)
    torch.testing.assert_close(enc.embed(x, 3), x + enc.weight[3:5])
    with pytest.raises(ValueError, match="5 positions"):
        enc.embed(torch.zeros(1, 3, 3), 3)


def test_nope_changes_nothing():
    enc = PositionalEncoding()
    x = torch.randn(1, 4, 8)
    assert enc.embed(x, 2) is x
    assert enc.rotary(0, 4) is None and enc.attention_bias(4, 4) is None


# ----------------------------------------------------------------------------- ALiBi
@pytest.mark.parametrize("n_head", [1, 2, 4, 6, 8, 12, 16, 20])
def test_alibi_slopes_follow_press_et_al(n_head):
    torch.testing.assert_close(alibi_slopes(n_head), torch.tensor(press_slopes(n_head), dtype=torch.float32))


@pytest.mark.parametrize("n_head", [4, 6, 12])
def test_alibi_bias_matches_bloom(n_head):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    T = 7
    bloom = build_alibi_tensor(torch.ones(1, T), n_head, torch.float32).view(n_head, 1, T)  # slope · j
    ours = ALiBiPositionalEncoding(n_head).attention_bias(T, T)[0]  # (H, T, T): −slope · |i − j|
    for i in range(T):  # they differ by a per-row constant, so each causal softmax row agrees
        torch.testing.assert_close(ours[:, i, : i + 1].softmax(-1), bloom[:, 0, : i + 1].softmax(-1))


def test_alibi_bias_is_minus_slope_times_distance_for_cached_queries():
    enc = ALiBiPositionalEncoding(4)
    bias = enc.attention_bias(2, 6)[0]  # queries at positions 4, 5
    slopes = torch.tensor(press_slopes(4))
    for h in range(4):
        for i, q_pos in enumerate((4, 5)):
            for k_pos in range(6):
                assert bias[h, i, k_pos].item() == pytest.approx(-slopes[h].item() * abs(q_pos - k_pos))


# ----------------------------------------------------------------------------- T5
@pytest.mark.parametrize(
    "distance, bidirectional, bucket",
    [
        (0, True, 0), (1, True, 17), (-1, True, 1), (7, True, 23), (-7, True, 7),
        (8, True, 24), (-8, True, 8), (-12, True, 9), (-16, True, 10), (-127, True, 15), (-500, True, 15),
        (200, True, 31),
        (0, False, 0), (5, False, 0), (-1, False, 1), (-15, False, 15), (-16, False, 16),
        (-32, False, 21), (-127, False, 31), (-1000, False, 31),
    ],
)
def test_t5_buckets_for_known_distances(distance, bidirectional, bucket):
    assert t5_relative_bucket(torch.tensor([distance]), bidirectional).item() == bucket


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 40)])
def test_t5_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 301)
    want = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    torch.testing.assert_close(t5_relative_bucket(relative, bidirectional, num_buckets, max_distance), want)


def test_t5_bias_looks_up_one_scalar_per_bucket_and_head():
    enc = T5RelativePositionBias(n_head=3, bidirectional=True)
    bias = enc.attention_bias(4, 4)  # (1, H, T, S)
    assert bias.shape == (1, 3, 4, 4)
    for i in range(4):
        for j in range(4):
            bucket = t5_relative_bucket(torch.tensor(j - i), True).item()
            torch.testing.assert_close(bias[0, :, i, j], enc.relative_bias.weight[bucket])
