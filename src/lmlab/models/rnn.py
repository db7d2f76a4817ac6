"""GRU baselines in the classic style: a character LM (embedding → GRU → dropout → dense, as in
the Keras example) and a seq2seq model whose encoder's final state starts the decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lmlab.models.config import ModelConfig


class GRUCache:
    """The GRU's hidden state between decoding calls (updated in place)."""

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None  # (n_layer, B, H)


def _gru(config: ModelConfig) -> nn.GRU:
    return nn.GRU(
        config.d_model,
        config.rnn_hidden,
        num_layers=config.n_layer,
        batch_first=True,
        dropout=config.dropout if config.n_layer > 1 else 0.0,
    )


class GRULM(nn.Module):
    """Recurrent baseline. ``model(ids)`` returns logits (B, T, V) like :class:`DecoderLM`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.gru = _gru(config)
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


class GRUSeq2Seq(nn.Module):
    """GRU encoder-decoder (Cho et al. 2014 / Sutskever et al. 2014 style, trained with teacher
    forcing): the encoder's final hidden state is the decoder's initial state. One embedding
    serves both sides. Same call signatures as :class:`EncoderDecoderLM`:

    - ``model(input_ids, decoder_input_ids, attention_mask=None)`` → logits (B, T, V);
    - ``encode(input_ids, attention_mask=None)`` → final state (n_layer, B, H), the "memory";
    - ``decode(decoder_input_ids, memory, cache=None, start_pos=0)`` → logits.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = _gru(config)
        self.decoder = _gru(config)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_hidden, config.vocab_size)

    max_positions = None

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, S), decoder_input_ids (B, T) → logits (B, T, V). A left-to-right decoder
        never reads later positions, so right-padded targets need no mask."""
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S) → the state after each sequence's last real token (n_layer, B, H).
        attention_mask (B, S) is False at (right) padding."""
        x = self.embedding(input_ids)  # (B, S, C)
        if attention_mask is not None:
            lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, hidden = self.encoder(x)
        return hidden

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        cache: GRUCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """decoder_input_ids (B, T) → logits (B, T, V), starting from ``memory`` at start_pos 0
        and from the cache's state after that."""
        hidden = cache.hidden if cache is not None and start_pos > 0 else memory
        out, hidden = self.decoder(self.embedding(decoder_input_ids), hidden)  # (B, T, H)
        if cache is not None:
            cache.hidden = hidden
        return self.head(self.dropout(out))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> GRUCache:
        """A recurrent state holder for incremental decoding."""
        return GRUCache()
