"""GRU baseline character LM, as in the classic Keras example: embedding → GRU → dropout → dense."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.models.config import ModelConfig


class GRUCache:
    """The GRU's hidden state between decoding calls (updated in place)."""

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None  # (n_layer, B, H)


class GRULM(nn.Module):
    """Recurrent baseline. ``model(ids)`` returns logits (B, T, V) like :class:`DecoderLM`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.gru = nn.GRU(
            config.d_model,
            config.rnn_hidden,
            num_layers=config.n_layer,
            batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_hidden, config.vocab_size)

    max_positions = None  # a recurrent model has no context limit

    def forward(self, ids: torch.Tensor, cache: GRUCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """ids: (B, T) → logits (B, T, V); with a cache, continues from its hidden state."""
        hidden = cache.hidden if cache is not None and start_pos > 0 else None
        out, hidden = self.gru(self.embedding(ids), hidden)  # (B, T, H)
        if cache is not None:
            cache.hidden = hidden
        return self.head(self.dropout(out))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> GRUCache:
        """A recurrent state holder (batch size and length need no preallocation)."""
        return GRUCache()
