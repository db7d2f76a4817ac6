"""Multi-head self-attention with grouped-query heads, causal masking and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.layers.kv_cache import KVCache


def causal_mask_with_offset(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where query i (at absolute position k_len-q_len+i) may attend."""
    offset = k_len - q_len
    q_pos = torch.arange(q_len, device=device)[:, None] + offset
    k_pos = torch.arange(k_len, device=device)[None, :]
    return k_pos <= q_pos


class MultiHeadAttention(nn.Module):
    """Causal self-attention through ``scaled_dot_product_attention``.

    ``n_kv_heads`` < ``n_head`` gives grouped-query attention (1 = multi-query): each key/value
    head serves ``n_head // n_kv_heads`` query heads.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        n_kv_heads = n_kv_heads or n_head
        if d_model % n_head or n_head % n_kv_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_head ({n_head}), "
                f"and n_head by n_kv_heads ({n_kv_heads})"
            )
        self.n_head = n_head
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_head
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_heads) * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0
    ) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C). With a cache, x holds positions [start_pos, start_pos+T)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim],
            dim=-1,
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, H_kv, start_pos+T, D)
        y = self._attend(q, k, v)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.out_proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of q (B, H, T, D) over k, v (B, H_kv, S, D), S ≥ T, q at the last T positions."""
        T, S = q.size(2), k.size(2)
        dropout = self.dropout if self.training else 0.0
        gqa = self.n_kv_heads != self.n_head
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
        mask = None if T == 1 else causal_mask_with_offset(T, S, q.device)  # a single query sees every key
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=gqa)
