"""A pre-norm block's decoding step in one native call (:func:`~lmlab.kernels.block.decode_block`).

A decoding step runs a few rows through every block; from Python that is some twenty small
operations per block, whose dispatch costs more than their arithmetic. Where a block is one the
kernel knows — LayerNorm or RMSNorm, multi-head or grouped-query attention with or without RoPE
(but no score biases), a plain or gated feed-forward with ReLU, GELU or SiLU — the whole step is
one call, with the same results up to float32 rounding. Inside
:func:`~lmlab.layers.linear.quantized_weights` (the int8 draft of speculative decoding) the
block's projections use their int8 copies there too. Anything else (training, attention capture,
forward hooks on its modules, ALiBi/T5 biases, MoE, other dtypes or devices) runs the modules.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from lmlab.kernels.block import PROJECTIONS, BlockWeights, block_weights, decode_block
from lmlab.layers.attention import MultiHeadAttention, kernel_mask
from lmlab.layers.feedforward import FeedForward, GatedFeedForward
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.linear import QuantizedWeights, active_quantized_weights
from lmlab.layers.masks import AttentionMask
from lmlab.layers.positional import Rotary

# attention module → {"float32" | "int8": (its block's weight addresses, BlockWeights or None)}; kept
# beside the modules, not on them, so that copying or pickling a model never meets a ctypes structure
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def fused_decode_step(
    norm1: nn.Module,
    attention: MultiHeadAttention,
    norm2: nn.Module,
    ffn: nn.Module,
    x: torch.Tensor,
    cache: KVCache,
    start_pos: int,
    mask: AttentionMask | None,
    rotary: Rotary | None = None,
) -> torch.Tensor | None:
    """``x + attention(norm1(x))``, then ``+ ffn(norm2(·))``, for x (B, T, C) at positions
    [start_pos, start_pos+T) with B·T ≤ 8 (queries and keys rotated by ``rotary``), its keys and
    values written to ``cache`` → (B, T, C); None, with nothing written, where the native block
    does not apply."""
    if torch.is_grad_enabled() or attention.training or ffn.training or attention.keep_weights:
        return None
    layers = _layers(norm1, attention, norm2, ffn)
    if layers is None or _hooked(attention, ffn, *layers.values()):  # a forward hook expects its module to run
        return None
    usable, allowed = kernel_mask(mask, x.size(1))
    weights = _weights(attention, ffn, layers, active_quantized_weights()) if usable else None
    if weights is None:
        return None
    rope = (rotary.cos, rotary.sin) if rotary is not None else None
    y = decode_block(weights, x, cache.keys, cache.values, start_pos, cache.row_table(), allowed, rope)
    if y is not None:
        cache.read_natively = True
    return y


def _layers(norm1: nn.Module, attention: MultiHeadAttention, norm2: nn.Module, ffn: nn.Module) -> dict | None:
    """The block's norms and projections by the kernel's names ("norm1", "qkv", …, "down"; a
    plain feed-forward has no "gate"), or None when they are not of a kind it runs. Read from the
    modules' registries directly: this runs at every step of every block."""
    if type(ffn) not in (FeedForward, GatedFeedForward) or type(norm1) is not type(norm2):
        return None
    if type(norm1) not in (nn.LayerNorm, nn.RMSNorm):
        return None
    projections, mlp = attention._modules, ffn._modules
    return {
        "norm1": norm1, "norm2": norm2, "qkv": projections["qkv"], "out": projections["out_proj"],
        "up": mlp["up"], "gate": mlp.get("gate"), "down": mlp["down"],
    }


def _hooked(*modules: nn.Module | None) -> bool:
    """Whether a forward (pre-)hook watches any of these modules (None: absent)."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


def _weights(attention: MultiHeadAttention, ffn: nn.Module, layers: dict, table: QuantizedWeights | None) -> BlockWeights | None:
    """The block's :class:`BlockWeights` (with the int8 copies ``table`` holds for its projections,
    if any), kept per attention module and rebuilt when a weight tensor is replaced; None for a
    block the kernel does not run."""
    tensors = {}
    for name, layer in layers.items():
        parameters = layer._parameters if layer is not None else {}
        tensors[f"{name}_w"], tensors[f"{name}_b"] = parameters.get("weight"), parameters.get("bias")
    int8 = _int8_copies(layers, table) if table is not None else None
    used = list(tensors.values()) + ([t for pair in int8.values() for t in pair] if int8 else [])
    key = (layers["norm1"].eps, layers["norm2"].eps, *(t.data_ptr() if t is not None else 0 for t in used))
    variant = "float32" if table is None else "int8"
    plans = _PLANS.setdefault(attention, {})
    plan = plans.get(variant)
    if plan is not None and plan[0] == key:
        return plan[1]
    weights = None
    if _norms_supported(layers["norm1"], layers["norm2"]) and (table is None or int8 is not None):
        norm = "layernorm" if isinstance(layers["norm1"], nn.LayerNorm) else "rmsnorm"
        eps = layers["norm1"].eps if layers["norm1"].eps is not None else torch.finfo(torch.float32).eps
        weights = block_weights(
            heads=attention.n_head, kv_heads=attention.n_kv_heads, norm=norm, eps=eps, activation=ffn.activation,
            tensors=tensors, int8=int8,
        )
    plans[variant] = (key, weights)
    return weights


def _norms_supported(norm1: nn.Module, norm2: nn.Module) -> bool:
    """Both norms with a per-channel weight and the same epsilon."""
    return norm1.eps == norm2.eps and norm1.weight is not None and norm2.weight is not None and norm1.weight.dim() == 1


def _int8_copies(layers: dict, table: QuantizedWeights) -> dict | None:
    """The int8 (weight, scale) of each of the block's projections from ``table``; None unless it
    holds every one of them (a block half int8, half float32, runs as modules)."""
    present = {name: layers[name] for name in PROJECTIONS if layers[name] is not None}
    if not all(layer in table for layer in present.values()):
        return None
    return {name: table[layer] for name, layer in present.items()}
