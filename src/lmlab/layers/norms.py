"""Normalisation layers and where a block puts them (pre- or post-norm), chosen by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


def build_norm(kind: str, d_model: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """LayerNorm (with or without bias) or RMSNorm over the last dimension."""
    if kind == "layernorm":
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


Sublayer = Callable[[torch.Tensor], torch.Tensor]


def pre_norm(x: torch.Tensor, norm: nn.Module, sublayer: Sublayer) -> torch.Tensor:
    """``x + sublayer(norm(x))`` (GPT-2, Llama, T5): the residual stream is never normalised."""
    return x + sublayer(norm(x))


def post_norm(x: torch.Tensor, norm: nn.Module, sublayer: Sublayer) -> torch.Tensor:
    """``norm(x + sublayer(x))`` (the original Transformer, BERT, BART)."""
    return norm(x + sublayer(x))


@dataclass(frozen=True)
class NormPlacement:
    """Where a stack of blocks normalises: around each sublayer, and at its input or output."""

    residual: Callable[[torch.Tensor, nn.Module, Sublayer], torch.Tensor]
    norm_embeddings: bool  # post-norm stacks normalise the embeddings (BERT, BART) ...
    norm_output: bool  # ... pre-norm stacks their output (GPT-2's final LayerNorm)


PLACEMENTS = {
    "pre": NormPlacement(pre_norm, norm_embeddings=False, norm_output=True),
    "post": NormPlacement(post_norm, norm_embeddings=True, norm_output=False),
}
