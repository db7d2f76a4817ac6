"""A whole pre-norm Transformer block for the tokens of one decoding step in one native call
(``decode_block.c``): norm, fused q|k|v projection, cache attention, output projection, residual,
norm, feed-forward, residual."""

from __future__ import annotations

import ctypes

import torch

from lmlab.kernels.attention import cache_fits, cache_reading
from lmlab.kernels.build import BLOCK_ROWS, load_native

NORMS = {"layernorm": 0, "rmsnorm": 1}
ACTIVATIONS = {"relu": 0, "gelu": 1, "gelu-tanh": 2, "silu": 3}
_POINTERS = ("norm1_w", "norm1_b", "norm2_w", "norm2_b", "qkv_w", "qkv_b", "out_w", "out_b",
             "up_w", "up_b", "gate_w", "gate_b", "down_w", "down_b")
PROJECTIONS = ("qkv", "out", "up", "gate", "down")
_INT8_POINTERS = tuple(f"{name}_q" for name in PROJECTIONS) + tuple(f"{name}_s" for name in PROJECTIONS)


class BlockWeights(ctypes.Structure):
    """A block's shapes and the addresses of its weights (``block`` in decode_block.c). It holds
    addresses, not tensors: whoever builds it keeps the tensors alive and rebuilds it when they
    move (see :func:`block_weights`)."""

    _fields_ = (
        [(name, ctypes.c_int) for name in ("C", "H", "Hkv", "D", "F", "norm", "activation", "gated")]
        + [("eps", ctypes.c_float)]
        + [(name, ctypes.c_void_p) for name in _POINTERS + _INT8_POINTERS]
    )


def block_weights(
    *,
    heads: int,
    kv_heads: int,
    norm: str,
    eps: float,
    activation: str,
    tensors: dict[str, torch.Tensor | None],
    int8: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> BlockWeights | None:
    """The :class:`BlockWeights` of a block whose weights are ``tensors`` (the names of
    ``_POINTERS``; biases and the gate may be None), or None where the kernel cannot run it: a norm
    or activation it lacks, weights that are not contiguous float32 on the CPU. ``int8``: for an
    int8 draft, each projection of :data:`PROJECTIONS` the block has → (int8 weight of the same
    shape, float32 scale per row); the kernel then computes those with them."""
    if norm not in NORMS or activation not in ACTIVATIONS or load_native() is None:
        return None
    present = [t for t in tensors.values() if t is not None]
    if any(t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous() for t in present):
        return None
    qkv, up = tensors["qkv_w"], tensors["up_w"]
    C, F = qkv.size(1), up.size(0)
    D = qkv.size(0) // (heads + 2 * kv_heads)
    if not _shapes_agree(tensors, C, F, heads * D, (heads + 2 * kv_heads) * D):
        return None
    addresses = [tensors[name].data_ptr() if tensors[name] is not None else None for name in _POINTERS]
    if int8 is not None:
        int8_addresses = _int8_addresses(tensors, int8)
        if int8_addresses is None:
            return None
        addresses += int8_addresses
    return BlockWeights(
        C, heads, kv_heads, D, F, NORMS[norm], ACTIVATIONS[activation], tensors["gate_w"] is not None, eps, *addresses
    )


def _int8_addresses(tensors: dict[str, torch.Tensor | None], int8: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list | None:
    """The addresses of the int8 weights, then of their scales, in :data:`PROJECTIONS` order (None
    for an absent gate); None unless every projection the block has has an int8 copy of its shape."""
    weights, scales = [], []
    for name in PROJECTIONS:
        weight = tensors[f"{name}_w"]
        if weight is None:
            weights.append(None)
            scales.append(None)
            continue
        if name not in int8:
            return None
        q, scale = int8[name]
        if q.dtype != torch.int8 or q.shape != weight.shape or not q.is_contiguous():
            return None
        if scale.dtype != torch.float32 or scale.shape != (weight.size(0),) or not scale.is_contiguous():
            return None
        weights.append(q.data_ptr())
        scales.append(scale.data_ptr())
    return weights + scales


def _shapes_agree(tensors: dict[str, torch.Tensor | None], C: int, F: int, HD: int, QKV: int) -> bool:
    """Every weight has the shape the kernel will read it with (it reads raw memory)."""
    expected = {
        "norm1_w": (C,), "norm1_b": (C,), "norm2_w": (C,), "norm2_b": (C,),
        "qkv_w": (QKV, C), "qkv_b": (QKV,), "out_w": (C, HD), "out_b": (C,),
        "up_w": (F, C), "up_b": (F,), "gate_w": (F, C), "gate_b": (F,), "down_w": (C, F), "down_b": (C,),
    }
    return all(t is None or tuple(t.shape) == expected[name] for name, t in tensors.items())


def decode_block(
    weights: BlockWeights,
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    rows: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """The block on x (B, T, C) at positions [start, start+T), B·T ≤ 16 (≤ 8 with int8 weights)
    and T ≤ 8, writing their keys and values into the cache (the arguments of :func:`~lmlab.kernels.decode_attention`) → (B, T, C).
    rope: RoPE's (cos, sin) of these positions, (T, r) or (B|1, 1, T, r), rotating the first r
    dimensions of every query and key head ("rotate half"). None, with the cache untouched, where
    it does not apply (run the block's modules)."""
    lib = load_native()
    B, T, C = x.shape
    if lib is None or B * T > BLOCK_ROWS or x.dtype != torch.float32 or not x.is_cpu or C != weights.C:
        return None
    if not cache_fits((B, weights.H, T, weights.D), keys, values, start, rows, allowed) or keys.size(1) != weights.Hkv:
        return None
    rotation = _rope_arguments(rope, B, T, weights.D)
    if rotation is None:
        return None
    y = x.clone(memory_format=torch.contiguous_format)  # (B, T, C), updated in place
    done = lib.decode_block(
        ctypes.addressof(weights), B, T, start, keys.data_ptr(), values.data_ptr(), keys.size(2),
        *cache_reading(rows, allowed), *rotation, y.data_ptr(),
    )
    return y if done == 0 else None


def _rope_arguments(rope: tuple[torch.Tensor, torch.Tensor] | None, B: int, T: int, D: int) -> tuple | None:
    """The kernel's (cos, sin, c_b, c_t, r) for RoPE tables of (T, r) or (B|1, 1, T, r); no
    rotation for None; None for tables it cannot read."""
    if rope is None:
        return None, None, 0, 0, 0
    cos, sin = rope
    if cos.shape != sin.shape or cos.stride() != sin.stride() or cos.dtype != torch.float32 or sin.dtype != torch.float32:
        return None
    if not cos.is_cpu or cos.stride(-1) != 1 or not 2 <= cos.size(-1) <= D or cos.size(-1) % 2:
        return None
    if cos.dim() == 2 and cos.size(0) == T:
        return cos.data_ptr(), sin.data_ptr(), 0, cos.stride(0), cos.size(-1)
    if cos.dim() == 4 and cos.size(0) in (1, B) and cos.shape[1:3] == (1, T):
        return cos.data_ptr(), sin.data_ptr(), cos.stride(0) if cos.size(0) > 1 else 0, cos.stride(2), cos.size(-1)
    return None
