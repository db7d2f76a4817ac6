"""Native modules that take the place of a model's plain ones in its decoding twin.

Each is the plain module (same parameters, same submodules, same ``forward`` interface) with its
decoding step computed by a native kernel where one applies — a few float32 CPU rows, no
gradients — and the plain computation everywhere else:

- :class:`NativeLinear`: ``nn.Linear`` through :func:`~lmlab.kernels.skinny_linear` (or, inside
  :func:`int8_weights`, its int8 copy through the int8 kernel: the draft of speculative decoding);
  more rows than the kernel takes (a prompt's prefill) through :func:`lmlab.kernels.onednn_linear.linear`;
- :class:`NativeSelfAttention`: the cache step of ``MultiHeadAttention`` (write the new keys and
  values, attend over the cache) in :func:`~lmlab.kernels.decode_attention`, reading the cache
  through beam search's row table when one is in use.

The fused pre-norm block is :class:`~lmlab.generation.fast.block.NativeBlock`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, TypeVar

import torch
from torch import nn

from lmlab.generation.fast.rows import rows_in_use
from lmlab.kernels import decode_attention, onednn_linear, skinny_linear, skinny_linear_int8_float
from lmlab.layers.attention import MultiHeadAttention
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.masks import AttentionMask

Int8Weights = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # layer → (int8 (N, K), scale (N,))
Plain = TypeVar("Plain", bound=nn.Module)

_int8: ContextVar[Int8Weights | None] = ContextVar("lmlab_int8_weights", default=None)


@contextmanager
def int8_weights(table: Int8Weights) -> Iterator[None]:
    """Within the block, the native layers in ``table`` compute with their int8 weights (where the
    kernel applies) — an int8 draft of the same model."""
    token = _int8.set(table)
    try:
        yield
    finally:
        _int8.reset(token)


def int8_weights_in_use() -> Int8Weights | None:
    """The table of layers computing with int8 weights here (see :func:`int8_weights`), or None."""
    return _int8.get()


def adopt(cls: type[Plain], module: nn.Module) -> Plain:
    """A ``cls`` (a native subclass of ``module``'s class) holding ``module``'s own parameters,
    buffers and submodules: the same layer, with the native decoding step."""
    native = copy.copy(module)  # a new module object over the same parameter and submodule tables
    native.__class__ = cls
    return native


class NativeLinear(nn.Linear):
    """``nn.Linear`` whose few float32 (or bfloat16) CPU rows run the native few-row kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features)."""
        table = _int8.get()
        if table is not None and self in table:
            y = skinny_linear_int8_float(x, *table[self], self.bias)
            if y is not None:
                return y
        y = skinny_linear(x, self.weight, self.bias)
        return y if y is not None else onednn_linear.linear(x, self.weight, self.bias)


class NativeSelfAttention(MultiHeadAttention):
    """``MultiHeadAttention`` whose cache step runs in the native kernel."""

    def attend_with_cache(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache | None,
        start_pos: int,
        mask: AttentionMask | None,
    ) -> torch.Tensor:
        """As the plain step (q (B, H, T, D), k, v (B, H_kv, T, D) → (B, T, C)), natively where it can."""
        if cache is not None and not self.training:
            y = self._native_step(q, k, v, cache, start_pos, mask)
            if y is not None:
                return y
            settle_rows()  # the plain step reads each row's own buffer row
        return super().attend_with_cache(q, k, v, cache, start_pos, mask)

    def _native_step(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, start_pos: int, mask: AttentionMask | None
    ) -> torch.Tensor | None:
        usable, allowed = kernel_mask(mask, q.size(2))
        if not usable:
            return None
        y = decode_attention(q, k, v, cache.keys, cache.values, start_pos, row_table(), allowed)  # (B, T, H, D)
        if y is None:
            return None
        B, T, H, D = y.shape
        return self.output(y.view(B, T, H * D))


def kernel_mask(mask: AttentionMask | None, q_len: int) -> tuple[bool, torch.Tensor | None]:
    """An :class:`AttentionMask` as the native cache kernels take it: (whether they can, the
    boolean "may attend" tensor or None for causal). Additive masks (position biases) they cannot."""
    if mask is None or mask.is_causal:
        return True, None
    if mask.tensor is None:  # everything allowed: for a single newest query, the same as causal
        return q_len == 1, None
    if mask.tensor.dtype != torch.bool:
        return False, None
    return True, mask.tensor


def row_table() -> torch.Tensor | None:
    """The (B, S_max) int32 row table the kernels read the cache through now, or None."""
    rows = rows_in_use()
    return rows.for_kernels() if rows is not None else None


def settle_rows() -> None:
    """Before a plain read of the caches: every row's positions back in its own buffer row."""
    rows = rows_in_use()
    if rows is not None:
        rows.settle()
