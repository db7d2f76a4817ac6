"""Dropout, as ``nn.Dropout`` computes it, with a keep-mask that is cheaper to draw on the CPU.

In training each element is zeroed with probability ``p`` and the rest are scaled by
``1 / (1 - p)`` (inverted dropout), so evaluation needs no rescaling. On the CPU, PyTorch's own
dropout draws its mask with ``bernoulli_``, which is much slower than a uniform draw; here the mask
is ``torch.rand(...) >= p`` (the same distribution), kept as booleans for the backward pass.
Elsewhere (CUDA, MPS) the fused ``F.dropout`` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout with probability ``p`` (a drop-in for ``nn.Dropout``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _UniformMaskDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _UniformMaskDropout(torch.autograd.Function):
    """x * keep / (1 - p), keep = uniform draw ≥ p; the backward pass reuses the boolean mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= p  # (…,) bool
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.mul(x, keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.mul(grad, keep).mul_(ctx.scale), None
