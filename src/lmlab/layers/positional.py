"""Positional encodings: learned, sinusoidal, RoPE, ALiBi, T5 relative bias, and none (NoPE).

Every encoding is a :class:`PositionalEncoding` and acts through one of three hooks, which a
backbone calls once per forward pass:

- :meth:`~PositionalEncoding.embed` adds absolute positions to the token embeddings (learned,
  sinusoidal);
- :meth:`~PositionalEncoding.rotary` gives the rotation every attention layer applies to its
  queries and keys (RoPE);
- :meth:`~PositionalEncoding.attention_bias` gives additive attention scores shared by every
  layer (ALiBi, T5).

The base class does nothing in all three, which is exactly NoPE.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """No positional information at all (NoPE); the base of every other encoding."""

    def embed(self, x: torch.Tensor, start_pos: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings x (B, T, C) of positions [start_pos, start_pos+T), with positions added.

        position_ids: (B, T) explicit positions per row (left-padded batches), instead of start_pos.
        """
        return x

    def rotary(self, start_pos: int, length: int, position_ids: torch.Tensor | None = None) -> "Rotary | None":
        """The rotation for positions [start_pos, start_pos+length) (or ``position_ids`` (B, T)), or None."""
        return None

    def attention_bias(self, q_len: int, k_len: int) -> torch.Tensor | None:
        """Additive scores (1, H, T, S) for the last ``q_len`` of ``k_len`` positions, or None."""
        return None


class LearnedPositionalEmbedding(PositionalEncoding):
    """One trained vector per absolute position, up to ``max_len`` (GPT-2, BERT)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def embed(self, x: torch.Tensor, start_pos: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) + the learned vectors of positions [start_pos, start_pos+T) (or ``position_ids``)."""
        if position_ids is not None:
            return x + self.weight[position_ids]  # (B, T, C)
        end = start_pos + x.size(1)
        if end > self.weight.size(0):
            raise ValueError(f"learned positions cover {self.weight.size(0)} positions; got position {end - 1}")
        return x + self.weight[start_pos:end]


def sinusoidal_table(start: int, length: int, d_model: int, halves: bool = False) -> torch.Tensor:
    """(length, d_model): sines and cosines of wavelengths 2π … 10000·2π — sin on even and cos on
    odd dimensions, or with ``halves`` sin on the first half and cos on the second (the layout of
    fairseq, Marian and PEGASUS)."""
    position = torch.arange(start, start + length, dtype=torch.float32)[:, None]  # (T, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    angle = position * frequency  # (T, ceil(C/2))
    if halves:
        return torch.cat((angle.sin(), angle.cos()), dim=-1)[:, :d_model]  # (T, C)
    table = torch.zeros(length, d_model)
    table[:, 0::2] = angle.sin()
    table[:, 1::2] = angle.cos()[:, : d_model // 2]
    return table


class SinusoidalPositionalEncoding(PositionalEncoding):
    """Fixed sinusoids (Vaswani et al., 2017), added to the embeddings scaled by √d_model.

    The table is precomputed for ``max_len`` positions; longer inputs compute it on the fly, so
    the encoding extrapolates to any length. ``halves``: the sin/cos layout of
    :func:`sinusoidal_table`.
    """

    def __init__(self, max_len: int, d_model: int, halves: bool = False):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.halves = halves
        self.register_buffer("table", sinusoidal_table(0, max_len, d_model, halves), persistent=False)

    def embed(self, x: torch.Tensor, start_pos: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) · √C + sinusoids of positions [start_pos, start_pos+T) (or ``position_ids``)."""
        T, C = x.size(1), x.size(2)
        if position_ids is not None and int(position_ids.max()) < self.table.size(0):
            table = self.table[position_ids]  # (B, T, C)
        elif start_pos + T <= self.table.size(0):
            table = self.table[start_pos : start_pos + T]
        else:
            table = sinusoidal_table(start_pos, T, C, self.halves).to(x.device)
        return x * self.scale + table.to(x.dtype)


class Rotary:
    """cos/sin tables of some positions; rotates the first ``cos.size(-1)`` dims of each head.

    Pairs dimension i with i + r/2 ("rotate half", as in GPT-NeoX and Llama); dimensions past the
    rotary width pass through unchanged (partial rotary).
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        self.cos = cos  # (T, r), or (B, 1, T, r) for per-row positions
        self.sin = sin  # (T, r), or (B, 1, T, r)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, D) → the same shape, rotated."""
        r = self.cos.size(-1)
        x_rot = x[..., :r]
        x1, x2 = x_rot.chunk(2, dim=-1)
        rotated = (x_rot * self.cos + torch.cat((-x2, x1), dim=-1) * self.sin).to(x.dtype)
        return rotated if r == x.size(-1) else torch.cat((rotated, x[..., r:]), dim=-1)


class RotaryPositionalEncoding(PositionalEncoding):
    """RoPE (Su et al., 2021): queries and keys rotated by position-dependent angles.

    ``base`` sets the wavelengths (10000 in the paper); ``fraction`` < 1 rotates only that share of
    each head's dimensions (partial rotary, as in GPT-NeoX). cos/sin are precomputed for
    ``max_len`` positions and extended on the fly beyond.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, fraction: float = 1.0):
        super().__init__()
        rot_dim = int(head_dim * fraction) // 2 * 2
        if rot_dim < 2:
            raise ValueError(f"rotary fraction {fraction} of head size {head_dim} leaves nothing to rotate")
        inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)  # (r/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cos, sin = self._tables(0, max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        position = torch.arange(start, start + length, dtype=torch.float32, device=self.inv_freq.device)
        angle = position[:, None] * self.inv_freq[None, :]  # (T, r/2)
        angle = torch.cat((angle, angle), dim=-1)  # (T, r)
        return angle.cos(), angle.sin()

    def rotary(self, start_pos: int, length: int, position_ids: torch.Tensor | None = None) -> Rotary:
        """The rotation of positions [start_pos, start_pos+length), or of ``position_ids`` (B, T) per row."""
        if position_ids is not None:
            if int(position_ids.max()) < self.cos.size(0):
                return Rotary(self.cos[position_ids][:, None], self.sin[position_ids][:, None])  # (B, 1, T, r)
            angle = position_ids[..., None].float() * self.inv_freq  # (B, T, r/2)
            angle = torch.cat((angle, angle), dim=-1)[:, None]  # (B, 1, T, r)
            return Rotary(angle.cos(), angle.sin())
        end = start_pos + length
        if end <= self.cos.size(0):
            return Rotary(self.cos[start_pos:end], self.sin[start_pos:end])
        return Rotary(*self._tables(start_pos, length))


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head slopes of Press et al. (2022): 2^(-8/n), 2^(-16/n), … for n a power of two; otherwise
    those of the nearest lower power of two, then every other slope of the next power up."""
    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = powers(closest) + powers(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def relative_distances(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, S) key position minus query position, queries being the last ``q_len`` positions."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    return k_pos[None, :] - q_pos[:, None]


class ALiBiPositionalEncoding(PositionalEncoding):
    """ALiBi (Press et al., 2022): each head adds −slope·|i − j| to its attention scores.

    With a causal mask this is the paper's linear bias; in a bidirectional encoder it is the
    symmetric version. Extrapolates to any length.
    """

    def __init__(self, n_head: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def attention_bias(self, q_len: int, k_len: int) -> torch.Tensor:
        """(1, H, T, S)."""
        distance = relative_distances(q_len, k_len, self.slopes.device).abs()  # (T, S)
        return -self.slopes[None, :, None, None] * distance[None, None]


def t5_relative_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """T5's bucket of each (key − query) distance: exact for small distances, log-spaced up to
    ``max_distance``, the last bucket beyond. Bidirectional uses half the buckets per direction;
    causal folds every future distance into bucket 0."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class T5RelativePositionBias(PositionalEncoding):
    """T5's learned relative-position bias: one scalar per (bucket, head), shared by all layers.

    ``bidirectional`` for encoders, False (causal buckets) for decoders. Extrapolates to any
    length (far distances share the last bucket).
    """

    def __init__(self, n_head: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_bias = nn.Embedding(num_buckets, n_head)

    def attention_bias(self, q_len: int, k_len: int) -> torch.Tensor:
        """(1, H, T, S)."""
        distance = relative_distances(q_len, k_len, self.relative_bias.weight.device)  # (T, S)
        buckets = t5_relative_bucket(distance, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_bias(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)
