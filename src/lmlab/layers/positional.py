"""Positional encodings added to the token embeddings."""

from __future__ import annotations

import torch
from torch import nn


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per absolute position, up to ``max_len``."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, start_pos: int, length: int) -> torch.Tensor:
        """Embeddings of positions [start_pos, start_pos+length): (length, C)."""
        return self.weight[start_pos : start_pos + length]
