"""Attention masks: causal, key padding and prefix-LM, combinable, plus additive position biases.

A mask is resolved once per forward pass (not once per layer) into what
``scaled_dot_product_attention`` takes: nothing at all (with ``is_causal`` set for the plain causal
case, so SDPA keeps its fast kernels), a boolean "may attend" tensor, or, when there is a position
bias (ALiBi, T5), one additive float tensor. Queries are always the last ``q_len`` of the
``k_len`` key positions, which covers training (q_len = k_len), cached decoding (q_len < k_len)
and cross-attention (no causality).

No query row ever yields NaN: SDPA returns zeros for a boolean row with no allowed key, and the
additive form fills disallowed entries with the dtype's most negative finite value (not −inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMask:
    """What SDPA needs to know about who may attend to whom.

    ``tensor`` is None (everything allowed, or causal when ``is_causal``), a bool tensor
    (B|1, 1, T, S) that is True where attention is allowed, or an additive float tensor
    (B|1, H|1, T, S).
    """

    tensor: torch.Tensor | None = None
    is_causal: bool = False


def build_attention_mask(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    key_padding: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> AttentionMask:
    """Combine the masks that apply into one :class:`AttentionMask`.

    causal: query at absolute position p (= k_len - q_len + i) sees keys ≤ p.
    key_padding: (B, S) bool, True for real tokens; padded keys are never attended.
    prefix_lengths: (B,) with ``causal``: keys before the prefix length are visible to every
        query (a bidirectional prefix, causal afterwards — the prefix LM).
    position_bias: (1|B, H, T, S) additive scores (ALiBi, T5 relative bias).
    """
    if key_padding is None and prefix_lengths is None and position_bias is None:
        if not causal or q_len == 1:  # a single newest query sees every key
            return AttentionMask()
        if q_len == k_len:
            return AttentionMask(is_causal=True)
    allowed = allowed_keys(q_len, k_len, causal, key_padding, prefix_lengths, device)  # (B|1, 1, T, S)
    if position_bias is None:
        return AttentionMask(allowed)
    lowest = torch.finfo(position_bias.dtype).min
    return AttentionMask(position_bias.masked_fill(~allowed, lowest))  # (B|1, H, T, S)


def allowed_keys(
    q_len: int,
    k_len: int,
    causal: bool,
    key_padding: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool (B|1, 1, T, S): True where query i may attend to key j (see :func:`build_attention_mask`)."""
    if key_padding is not None:
        device = key_padding.device
    elif prefix_lengths is not None:
        device = prefix_lengths.device
    k_pos = torch.arange(k_len, device=device)  # (S,)
    allowed = torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)  # (T,)
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])  # (1, 1, T, S)
        if prefix_lengths is not None:
            in_prefix = k_pos[None, :] < prefix_lengths[:, None]  # (B, S)
            allowed = allowed | in_prefix[:, None, None, :]  # (B, 1, T, S)
    if key_padding is not None:
        allowed = allowed & key_padding.bool()[:, None, None, :]  # (B, 1, T, S)
    return allowed
