"""A pre-norm block whose decoding step is one native call (:func:`~lmlab.kernels.block.decode_block`).

A decoding step runs a few rows through every block; from Python that is some twenty small
operations per block, whose dispatch costs more than their arithmetic. For a block the kernel
knows — LayerNorm or RMSNorm, multi-head or grouped-query attention with or without RoPE (but no
score biases), a plain or gated feed-forward with ReLU, GELU or SiLU — :class:`NativeBlock` makes
the whole step one call, with the same results up to float32 rounding. Inside
:func:`~lmlab.generation.fast.modules.int8_weights` (the int8 draft of speculative decoding) the
block's projections use their int8 copies there too. A one-token step of more rows than the
kernel takes (a serving batch) runs the kernel on groups of rows one after another, while the
block's weights are still in the CPU's cache. Anything else (prefill of many positions, other dtypes or devices,
masks with biases, a beam-search row table over more rows) runs the block's modules.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.generation.fast.modules import Int8Weights, int8_weights_in_use, kernel_mask, row_table
from lmlab.kernels import BLOCK_ROWS
from lmlab.kernels.block import ACTIVATIONS, PROJECTIONS, BlockWeights, block_weights, decode_block
from lmlab.layers.attention import MultiHeadAttention
from lmlab.layers.feedforward import FeedForward, GatedFeedForward
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.masks import AttentionMask
from lmlab.layers.norms import pre_norm
from lmlab.layers.positional import Rotary
from lmlab.models.blocks import TransformerBlock


def runs_natively(block: nn.Module) -> bool:
    """Whether ``block`` is a pre-norm :class:`TransformerBlock` of the kinds the kernel runs, made
    of plain ``nn.Linear`` projections (the kernel reads their weights; a subclass such as a LoRA
    adapter computes something else)."""
    if type(block) is not TransformerBlock or block.residual is not pre_norm:
        return False
    norms_ok = type(block.attn_norm) is type(block.ffn_norm) and type(block.attn_norm) in (nn.LayerNorm, nn.RMSNorm)
    if not norms_ok or type(block.ffn) not in (FeedForward, GatedFeedForward) or block.ffn.activation not in ACTIVATIONS:
        return False
    projections = [block.attn.qkv, block.attn.out_proj, block.ffn.up, block.ffn.down]
    if isinstance(block.ffn, GatedFeedForward):
        projections.append(block.ffn.gate)
    return type(block.attn) is MultiHeadAttention and all(type(p) is nn.Linear for p in projections)


class NativeBlock(TransformerBlock):
    """A pre-norm :class:`TransformerBlock` (see :func:`runs_natively`) whose decoding step — a
    cache and at most 16 rows (:data:`~lmlab.kernels.BLOCK_ROWS`) — is one native call (more rows:
    one call per group of them)."""

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rotary: Rotary | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C), as the plain block."""
        if cache is not None and not self.training and not torch.is_grad_enabled():
            y = self._native_step(x, mask, rotary, cache, start_pos)
            if y is not None:
                return y
        return super().forward(x, mask, rotary, cache, start_pos)

    def _native_step(
        self, x: torch.Tensor, mask: AttentionMask, rotary: Rotary | None, cache: KVCache, start_pos: int
    ) -> torch.Tensor | None:
        """The step in the kernel, its keys and values written to ``cache``; None, with nothing
        written, where it does not apply."""
        usable, allowed = kernel_mask(mask, x.size(1))
        weights = self._weights(int8_weights_in_use()) if usable else None
        if weights is None:
            return None
        rope = (rotary.cos, rotary.sin) if rotary is not None else None
        rows = row_table()
        B, T, _ = x.shape
        if B * T <= BLOCK_ROWS or T > 1 or rows is not None or cache.keys.size(0) != B:
            return decode_block(weights, x, cache.keys, cache.values, start_pos, rows, allowed, rope)
        return self._step_in_groups(weights, x, cache, start_pos, allowed, rope)

    @staticmethod
    def _step_in_groups(
        weights: BlockWeights, x: torch.Tensor, cache: KVCache, start_pos: int,
        allowed: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor | None:
        """One new token for more rows than the kernel takes: the kernel on consecutive groups of
        rows, one after another while the block's weights are still in the CPU's cache; None if
        any group cannot run (the modules then rewrite every row's keys and values)."""
        B = x.size(0)
        outputs = []
        for lo in range(0, B, BLOCK_ROWS):
            hi = min(B, lo + BLOCK_ROWS)
            mine = allowed[lo:hi] if allowed is not None and allowed.size(0) == B else allowed
            rope_rows = rope
            if rope is not None and rope[0].dim() == 4 and rope[0].size(0) == B:
                rope_rows = (rope[0][lo:hi], rope[1][lo:hi])
            y = decode_block(weights, x[lo:hi], cache.keys[lo:hi], cache.values[lo:hi], start_pos, None, mine, rope_rows)
            if y is None:
                return None
            outputs.append(y)  # (g, 1, C)
        return torch.cat(outputs)  # (B, 1, C)

    def _layers(self) -> dict[str, nn.Module | None]:
        """The block's norms and projections by the kernel's names (a plain feed-forward has no gate)."""
        return {
            "norm1": self.attn_norm, "norm2": self.ffn_norm, "qkv": self.attn.qkv, "out": self.attn.out_proj,
            "up": self.ffn.up, "gate": self.ffn.gate if isinstance(self.ffn, GatedFeedForward) else None, "down": self.ffn.down,
        }

    def _weights(self, table: Int8Weights | None) -> BlockWeights | None:
        """The block's :class:`BlockWeights`, with the int8 copies ``table`` holds for its
        projections (the draft's) if any; None where the kernel cannot run it. Built once per
        table: a decoding twin never sees its weights move (see :mod:`~lmlab.generation.fast.swap`)."""
        plans = self.__dict__.setdefault("_plans", {})  # "float32" | "int8" → (the table it was built for, weights)
        variant = "float32" if table is None else "int8"
        plan = plans.get(variant)
        if plan is None or plan[0] is not table:
            plan = plans[variant] = (table, self._build_weights(table))
        return plan[1]

    def _build_weights(self, table: Int8Weights | None) -> BlockWeights | None:
        layers = self._layers()
        tensors = {}
        for name, layer in layers.items():
            own = dict(layer.named_parameters(recurse=False)) if layer is not None else {}
            tensors[f"{name}_w"], tensors[f"{name}_b"] = own.get("weight"), own.get("bias")
        int8 = _int8_copies(layers, table) if table is not None else None
        norm1, norm2 = self.attn_norm, self.ffn_norm
        if norm1.eps != norm2.eps or norm1.weight is None or norm2.weight is None or norm1.weight.dim() != 1:
            return None
        if table is not None and int8 is None:  # a block half int8, half float32 runs as modules
            return None
        eps = norm1.eps if norm1.eps is not None else torch.finfo(torch.float32).eps
        return block_weights(
            heads=self.attn.n_head, kv_heads=self.attn.n_kv_heads,
            norm="layernorm" if isinstance(norm1, nn.LayerNorm) else "rmsnorm", eps=eps,
            activation=self.ffn.activation, tensors=tensors, int8=int8,
        )


def _int8_copies(layers: dict, table: Int8Weights) -> dict | None:
    """The int8 (weight, scale) of each of the block's projections from ``table``; None unless it
    holds every one of them."""
    present = {name: layers[name] for name in PROJECTIONS if layers[name] is not None}
    if not all(layer in table for layer in present.values()):
        return None
    return {name: table[layer] for name, layer in present.items()}
