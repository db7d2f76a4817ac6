"""Attention of a decoding step's queries over a KV cache (``decode_attention.c``)."""

from __future__ import annotations

import torch

from lmlab.kernels.build import MAX_ROWS, Heads, load_native


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    rows: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Write the keys and values of positions [start, start+T) into a cache, then the softmax
    attention (scale 1/√D) of their queries over it.

    q (B, H, T, D) with T ≤ 8; k, v (B, H_kv, T, D) (any strides); keys, values (B, H_kv, S_max,
    D) contiguous cache buffers; rows (B, S_max) int32: the buffer row holding each (row,
    position), None for its own; allowed (B|1, 1, T, start+T) bool with unit stride over positions,
    True where a query may attend (None: causal). Float32 on the CPU without gradients →
    (B, T, H, D); None, with nothing written, where it does not apply (use
    ``scaled_dot_product_attention``)."""
    lib = load_native()
    if lib is None or not _new_entries_fit(q, k, v, keys) or not cache_fits(q.shape, keys, values, start, rows, allowed):
        return None
    B, H, T, D = q.shape
    q, k, v = (x if x.stride(3) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(B, T, H, D, dtype=torch.float32)  # (B, T, H, D)
    done = lib.decode_attention(
        B, H, keys.size(1), T, D, keys.size(2), start, Heads.of(q), Heads.of(k), Heads.of(v),
        keys.data_ptr(), values.data_ptr(), *cache_reading(rows, allowed), out.data_ptr(),
    )
    return out if done == 0 else None


def _new_entries_fit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor) -> bool:
    B, H, T, D = q.shape
    if any(t.dtype != torch.float32 or not t.is_cpu for t in (q, k, v)) or (torch.is_grad_enabled() and q.requires_grad):
        return False
    return k.shape == (B, keys.size(1), T, D) and v.shape == k.shape


def cache_fits(
    query_shape: tuple[int, int, int, int],
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    rows: torch.Tensor | None,
    allowed: torch.Tensor | None,
) -> bool:
    """Whether queries of shape (B, H, T, D) at positions [start, start+T) can attend over these
    cache buffers in the kernels (see :func:`decode_attention` for the arguments)."""
    B, H, T, D = query_shape
    if keys.dtype != torch.float32 or values.dtype != torch.float32 or not keys.is_cpu:
        return False
    if not (keys.is_contiguous() and values.is_contiguous()) or keys.shape != values.shape:
        return False
    B_, H_kv, S_max, D_ = keys.shape
    if not 0 < T <= MAX_ROWS or (B_, D_) != (B, D) or start + T > S_max or H % H_kv:
        return False
    if rows is not None and (rows.dtype != torch.int32 or not rows.is_contiguous() or rows.shape != (B, S_max)):
        return False
    return allowed is None or (
        allowed.dtype == torch.bool and allowed.shape[1:] == (1, T, start + T) and allowed.size(0) in (1, B)
        and allowed.stride(3) == 1
    )


def cache_reading(rows: torch.Tensor | None, allowed: torch.Tensor | None) -> tuple:
    """The kernels' (rows, allowed, a_b, a_t) arguments: the row table's address, and the mask's
    address and strides (a broadcast mask has batch stride 0)."""
    rows_ptr = rows.data_ptr() if rows is not None else None
    if allowed is None:
        return rows_ptr, None, 0, 0
    return rows_ptr, allowed.data_ptr(), allowed.stride(0) if allowed.size(0) > 1 else 0, allowed.stride(2)
