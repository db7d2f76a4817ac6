"""Normalisation layers, chosen by name."""

from __future__ import annotations

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def build_norm(kind: str, d_model: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm over the last dimension."""
    if kind == "layernorm":
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
