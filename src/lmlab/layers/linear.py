"""The linear layer every Transformer projection uses."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.kernels import skinny_linear, skinny_linear_int8_float

QuantizedWeights = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # layer → (int8 (N, K), scale (N,))

_quantized: ContextVar[QuantizedWeights | None] = ContextVar("lmlab_quantized_weights", default=None)


@contextmanager
def quantized_weights(table: QuantizedWeights) -> Iterator[None]:
    """Within the block, the layers in ``table`` compute with their int8 weights (where the
    native kernel applies: a few float32 CPU rows) — an int8 draft of the same model."""
    token = _quantized.set(table)
    try:
        yield
    finally:
        _quantized.reset(token)


def active_quantized_weights() -> QuantizedWeights | None:
    """The table of layers that compute with int8 weights here (inside :func:`quantized_weights`),
    or None."""
    return _quantized.get() or None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) whose inference on a few float32
    CPU rows — one decoding step — runs the native :func:`~lmlab.kernels.skinny_linear` kernel
    when it is available; everything else (training, long inputs, other dtypes, GPUs) is
    ``F.linear``. Inside :func:`quantized_weights` it may use an int8 copy instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features)."""
        table = _quantized.get()
        if table is not None and self in table:
            y = skinny_linear_int8_float(x, *table[self], self.bias)
            if y is not None:
                return y
        y = skinny_linear(x, self.weight, self.bias)
        return y if y is not None else F.linear(x, self.weight, self.bias)
