"""Output heads on top of a backbone's hidden states: masked-LM and sequence classification, and
the poolings a classifier reads (first token, mean, last real token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.layers.dropout import Dropout
from lmlab.layers.norms import build_norm


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense → GELU → norm → vocabulary projection (with a bias)."""

    def __init__(self, d_model: int, vocab_size: int, norm: str = "layernorm", eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.norm = build_norm(norm, d_model, eps=eps)
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, T, C) → logits (B, T, V)."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


def first_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The first ([CLS]) position: (B, T, C) → (B, C)."""
    return hidden[:, 0]


def mean_over_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real (unpadded) positions: (B, T, C) → (B, C)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The last real (unpadded) position of each row, as GPT-2's classifier pools: (B, T, C) → (B, C)."""
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.size(1), device=hidden.device)  # (T,)
    last = (positions * attention_mask.to(torch.long)).argmax(dim=-1)  # (B,) the rightmost True
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


POOLING = {"cls": first_token, "mean": mean_over_tokens, "cls-dense-tanh": first_token}
DENSE_TANH_POOLING = ("cls-dense-tanh",)  # pooled vector → dense → tanh (BERT's pooler, RoBERTa's head)


class ClassificationHead(nn.Module):
    """Pool the sequence (first token or mean), dropout, then a linear layer to class scores."""

    def __init__(self, d_model: int, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        self.pool = POOLING[pooling]
        self.pooler = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh()) if pooling in DENSE_TANH_POOLING else nn.Identity()
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)

    @property
    def reads_first_token_only(self) -> bool:
        """Whether the pooling looks at the first position alone (so a backbone may compute only it)."""
        return self.pool is first_token

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden: (B, T, C) → class logits (B, num_labels)."""
        return self.classifier(self.dropout(self.pooler(self.pool(hidden, attention_mask))))
