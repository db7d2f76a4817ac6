"""Position-wise feed-forward networks: plain (ReLU/GELU/SELU/SiLU) and gated (GLU family)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.layers.dropout import Dropout

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"),
    "selu": F.selu,
    "silu": F.silu,
}
GATED = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu", "geglu-tanh": "gelu-tanh"}  # Shazeer (2020): act(xW) * xV
FFN_KINDS = tuple(ACTIVATIONS) + tuple(GATED)


class FeedForward(nn.Module):
    """d_model → d_ff → d_model with an activation: ``down(act(up(x)))``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C)."""
        return self.dropout(self.down(self.act(self.up(x))))


class GatedFeedForward(nn.Module):
    """GLU variant: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C)."""
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))


def build_feedforward(kind: str, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> nn.Module:
    """The feed-forward named ``kind`` (one of :data:`FFN_KINDS`)."""
    if kind in ACTIVATIONS:
        return FeedForward(d_model, d_ff, kind, bias, dropout)
    if kind in GATED:
        return GatedFeedForward(d_model, d_ff, GATED[kind], bias, dropout)
    raise ValueError(f"unknown feed-forward {kind!r}; choose one of {', '.join(FFN_KINDS)}")
