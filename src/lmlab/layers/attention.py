"""Multi-head attention: self-attention (MHA / GQA / MQA) with a KV cache, and cross-attention.

Both run through ``scaled_dot_product_attention``. Setting ``keep_weights`` on a layer (or using
:func:`capture_attention`) switches it to an explicit softmax that also stores the attention
weights, for visualisation; the normal path never materialises them. Training with attention
dropout on the CPU also takes the explicit softmax, so that the weights' dropout mask is drawn by
:func:`lmlab.layers.dropout.dropout` (PyTorch's CPU attention materialises the weights for
dropout anyway, and draws that mask more slowly).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.layers.dropout import Dropout, dropout
from lmlab.layers.kv_cache import CrossAttentionCache, KVCache
from lmlab.layers.masks import AttentionMask, allowed_keys, build_attention_mask
from lmlab.layers.positional import Rotary


def attention_scores(q: torch.Tensor, k: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """q·kᵀ/√D + mask: the scores (B, H, T, S) the softmax turns into weights, position biases
    (ALiBi, T5) included; keys a query may not see are −inf (boolean or causal mask) or the dtype's
    lowest value (additive mask). q: (B, H, T, D); k: (B, H_kv, S, D)."""
    k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)  # (B, H, S, D)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if mask.is_causal:
        scores = scores.masked_fill(~allowed_keys(T, S, causal=True, device=q.device), float("-inf"))
    elif mask.tensor is not None and mask.tensor.dtype == torch.bool:
        scores = scores.masked_fill(~mask.tensor, float("-inf"))
    elif mask.tensor is not None:
        scores = scores + mask.tensor
    return scores


def softmax_weights(scores: torch.Tensor) -> torch.Tensor:
    """Scores (B, H, T, S) → float32 weights; a row with no visible key is all zeros."""
    return scores.float().softmax(dim=-1).nan_to_num(0.0)


def dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, p: float) -> torch.Tensor:
    """softmax(q·kᵀ/√D + mask), with dropout ``p`` on the weights, times v: (B, H, T, D).

    Training attention on the CPU, written so the scores are built in place; a hidden key gets the
    dtype's lowest score, so a query that sees no key gets finite (uniform) weights, never NaN.
    q: (B, H, T, D); k, v: (B, H_kv, S, D).
    """
    group = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = (q / math.sqrt(q.size(-1))) @ k.transpose(-2, -1)  # (B, H, T, S)
    T, S = scores.shape[-2:]
    lowest = torch.finfo(scores.dtype).min
    if mask.is_causal:
        scores.masked_fill_(~allowed_keys(T, S, causal=True, device=q.device), lowest)
    elif mask.tensor is not None and mask.tensor.dtype == torch.bool:
        scores.masked_fill_(~mask.tensor, lowest)
    elif mask.tensor is not None:
        scores += mask.tensor
    return dropout(scores.softmax(dim=-1), p) @ v  # (B, H, T, D)


class Attention(nn.Module):
    """What self- and cross-attention share: head layout, output projection, the attend step."""

    def __init__(
        self, d_model: int, n_head: int, n_kv_heads: int | None, bias: bool, dropout: float, head_dim: int | None = None
    ):
        super().__init__()
        n_kv_heads = n_kv_heads or n_head
        if (head_dim is None and d_model % n_head) or n_head % n_kv_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_head ({n_head}), "
                f"and n_head by n_kv_heads ({n_kv_heads})"
            )
        self.n_head = n_head
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim or d_model // n_head  # an explicit head size need not divide d_model (T5)
        self.out_proj = nn.Linear(n_head * self.head_dim, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = Dropout(dropout)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None  # (B, H, T, S) of the last call, with keep_weights
        self.queries: torch.Tensor | None = None  # (B, H, T, D) of the last call, with keep_weights
        self.keys: torch.Tensor | None = None  # (B, H, S, D): each query head's keys, with keep_weights
        self.scores: torch.Tensor | None = None  # (B, H, T, S) before the softmax, with keep_weights

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(B, T, n·D) → (B, n, T, D)."""
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        """q (B, H, T, D) over k, v (B, H_kv, S, D) → projected output (B, T, C)."""
        B, H, T, D = q.shape
        if self.keep_weights:
            self.scores = attention_scores(q, k, mask).detach()
            self.weights = softmax_weights(self.scores).to(q.dtype)
            self.queries, self.keys = q.detach(), k.detach().repeat_interleave(H // k.size(1), dim=1)
            y = self.weights @ v.repeat_interleave(H // v.size(1), dim=1)  # (B, H, T, D)
        elif self.training and self.dropout > 0.0 and q.device.type == "cpu":
            y = dropout_attention(q, k, v, mask, self.dropout)  # (B, H, T, D)
        else:
            attn_mask = mask.tensor
            if attn_mask is not None and attn_mask.is_floating_point():
                attn_mask = attn_mask.to(q.dtype)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=mask.is_causal,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=H != k.size(1),
            )  # (B, H, T, D)
        return self.output(y.transpose(1, 2).reshape(B, T, H * D))

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' concatenated outputs (B, T, H·D) → projected back to the model (B, T, C)."""
        return self.resid_dropout(self.out_proj(y))


class MultiHeadAttention(Attention):
    """Self-attention; ``n_kv_heads`` < ``n_head`` gives grouped-query attention (1 = multi-query):
    each key/value head serves ``n_head // n_kv_heads`` query heads."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__(d_model, n_head, n_kv_heads, bias, dropout, head_dim)
        self.qkv = nn.Linear(d_model, (n_head + 2 * self.n_kv_heads) * self.head_dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int = 0,
        mask: AttentionMask | None = None,
        rotary: Rotary | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) at positions [start_pos, start_pos+T) → (B, T, C).

        mask: from :func:`~lmlab.layers.masks.build_attention_mask`; None means causal.
        rotary: RoPE rotation of these T positions, applied to queries and keys.
        cache: keys/values of earlier positions; these T are written into it.
        """
        q, k, v = self.project(x, rotary)
        return self.attend_with_cache(q, k, v, cache, start_pos, mask)

    def project(self, x: torch.Tensor, rotary: Rotary | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) → queries (B, H, T, D), keys and values (B, H_kv, T, D), rotated by ``rotary``."""
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = self._heads(q, self.n_head)  # (B, H, T, D)
        k = self._heads(k, self.n_kv_heads)  # (B, H_kv, T, D)
        v = self._heads(v, self.n_kv_heads)  # (B, H_kv, T, D)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        return q, k, v

    def attend_with_cache(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache | None,
        start_pos: int,
        mask: AttentionMask | None,
    ) -> torch.Tensor:
        """Write k, v (B, H_kv, T, D) into the cache (if any) at [start_pos, start_pos+T), then
        attend with q (B, H, T, D) over every key so far → projected output (B, T, C)."""
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, H_kv, start_pos+T, D)
        if mask is None:
            mask = build_attention_mask(q.size(2), k.size(2), causal=True, device=q.device)
        return self.attend(q, k, v, mask)


class CrossAttention(Attention):
    """Queries from the decoder, keys and values from the encoder output ("memory")."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__(d_model, n_head, n_kv_heads, bias, dropout, head_dim)
        self.q_proj = nn.Linear(d_model, n_head * self.head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * self.n_kv_heads * self.head_dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        mask: AttentionMask | None = None,
        cache: CrossAttentionCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) attends over memory (B, S, C) → (B, T, C).

        mask: usually the encoder's key padding (None: every memory position is visible).
        cache: holds the memory's keys/values after the first call, which later calls reuse.
        """
        q = self._heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        if cache is not None and cache.keys is not None:
            k, v = cache.keys, cache.values
        else:
            k, v = (self._heads(t, self.n_kv_heads) for t in self.kv_proj(memory).chunk(2, dim=-1))  # (B, H_kv, S, D)
            if cache is not None:
                cache.keys, cache.values = k, v
        return self.attend(q, k, v, mask or AttentionMask())


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[Attention]]:
    """Within the block, every attention layer of ``model`` keeps its weights.

    Yields the layers in order; after a forward pass, ``layer.weights`` is (B, H, T, S), and
    ``layer.queries``, ``layer.keys`` and ``layer.scores`` what they were computed from.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.keep_weights = True
    try:
        yield layers
    finally:
        for layer in layers:
            layer.keep_weights = False
            layer.weights = layer.queries = layer.keys = layer.scores = None
