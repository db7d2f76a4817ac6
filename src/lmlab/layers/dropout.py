"""Dropout, as ``nn.Dropout`` computes it, with a drop-mask that is cheaper to draw on the CPU.

In training each element is zeroed with probability ``p`` and the rest are scaled by
``1 / (1 - p)`` (inverted dropout), so evaluation needs no rescaling. On the CPU, PyTorch's own
dropout draws its mask with ``bernoulli_``, one random number per element; here one 64-bit draw
makes the mask of four elements: the draw is read as four 16-bit integers, and an element is
dropped when its integer falls in the lowest ``round(p · 2¹⁶)`` of the 2¹⁶ values. The drop
probability is therefore ``p`` rounded to a multiple of 2⁻¹⁶, and the scale uses that rounded
value, so the expectation is kept exactly. Elsewhere (CUDA, MPS) the fused ``F.dropout`` runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_LEVELS = 2**16  # each element's mask is one uniform 16-bit integer


class Dropout(nn.Module):
    """Inverted dropout with probability ``p`` (a drop-in for ``nn.Dropout``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1/(1-p)``
    when ``training``; ``x`` itself otherwise."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return _MaskedDropout.apply(x, p)


def drop_mask(shape: torch.Size, p: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape``, True where an element is dropped, and the drop probability it
    was drawn with (``p`` rounded to a multiple of 2⁻¹⁶)."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), 2**63 - 1)  # 64 uniform bits per four elements
    levels = words.view(torch.int16)[:count].view(shape)  # (…,) uniform over [-2¹⁵, 2¹⁵)
    dropped_levels = min(round(p * MASK_LEVELS), MASK_LEVELS - 1)
    return levels < dropped_levels - MASK_LEVELS // 2, dropped_levels / MASK_LEVELS


class _MaskedDropout(torch.autograd.Function):
    """x zeroed where the drop-mask is set, times 1/(1 - p); the backward pass reuses the mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped, drawn_p = drop_mask(x.shape, p, x.device)  # (…,) bool
        ctx.save_for_backward(dropped)
        ctx.scale = 1.0 / (1.0 - drawn_p)
        return torch.where(dropped, 0.0, x).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (dropped,) = ctx.saved_tensors
        return torch.where(dropped, 0.0, grad).mul_(ctx.scale), None
