"""GRU baselines in the classic style: a character LM (embedding → GRU → dropout → dense, as in
the Keras example) and a seq2seq model whose encoder's final state starts the decoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lmlab.layers.dropout import Dropout
from lmlab.models.config import ModelConfig
from lmlab.models.interface import DECODER, ENCODER_DECODER


class GRUCache:
    """The GRU's hidden state between decoding calls (updated in place); a
    :class:`~lmlab.models.interface.DecodingCache` without key/value caches."""

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None  # (n_layer, B, H)

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` (B,) of before (a state has no positions to limit)."""
        if self.hidden is not None:
            self.hidden = self.hidden.index_select(1, index)

    def copy_rows_from(self, other: "GRUCache", index: torch.Tensor) -> None:
        """Rows become rows ``index`` of ``other``'s state."""
        self.hidden = other.hidden.index_select(1, index) if other.hidden is not None else None

    def kv_caches(self) -> list:
        """A GRU keeps no keys or values."""
        return []


def _gru(config: ModelConfig) -> nn.GRU:
    return nn.GRU(
        config.d_model,
        config.rnn_hidden,
        num_layers=config.n_layer,
        batch_first=True,
        dropout=config.dropout if config.n_layer > 1 else 0.0,
    )


class GRULM(nn.Module):
    """Recurrent baseline. ``model(ids)`` returns logits (B, T, V) like :class:`DecoderLM`; a
    :class:`~lmlab.models.interface.DecoderModel` whose ``lm_head`` is its dense output layer."""

    structure = DECODER
    takes_padding = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.gru = _gru(config)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_hidden, config.vocab_size)

    max_positions = None  # a recurrent model has no context limit

    def forward(self, ids: torch.Tensor, cache: GRUCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """ids: (B, T) → logits (B, T, V); with a cache, continues from its hidden state."""
        return self.head(self.hidden_states(ids, cache, start_pos))

    def hidden_states(self, ids: torch.Tensor, cache: GRUCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """ids: (B, T) → the GRU's outputs after dropout (B, T, H), what the head reads."""
        hidden = cache.hidden if cache is not None and start_pos > 0 else None
        out, hidden = self.gru(self.embedding(ids), hidden)  # (B, T, H)
        if cache is not None:
            cache.hidden = hidden
        return self.dropout(out)

    @property
    def lm_head(self) -> nn.Linear:
        """The output layer (hidden → vocabulary)."""
        return self.head

    def new_cache(self, batch_size: int, max_len: int | None = None) -> GRUCache:
        """A recurrent state holder (batch size and length need no preallocation)."""
        return GRUCache()


class GRUSeq2Seq(nn.Module):
    """GRU encoder-decoder (Cho et al. 2014 / Sutskever et al. 2014 style, trained with teacher
    forcing): the encoder's final hidden state is the decoder's initial state. One embedding
    serves both sides. Same call signatures as :class:`EncoderDecoderLM`:

    - ``model(input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None)`` → logits (B, T, V);
    - ``encode(input_ids, attention_mask=None)`` → final state (n_layer, B, H), the "memory";
    - ``decode(decoder_input_ids, memory, attention_mask=None, cache=None, start_pos=0)`` → logits
      (the encoder mask is not needed there: the memory is one state per row).
    """

    structure = ENCODER_DECODER
    takes_padding = True
    memory_batch_dim = 1  # memory is (n_layer, B, H)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = _gru(config)
        self.decoder = _gru(config)
        self.dropout = Dropout(config.dropout)
        self.head = nn.Linear(config.rnn_hidden, config.vocab_size)

    max_positions = None

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, S), decoder_input_ids (B, T) → logits (B, T, V). A left-to-right decoder
        never reads later positions, so right-padded targets need no mask: ``decoder_attention_mask``
        is accepted (the trainer passes it to every encoder-decoder) and not needed."""
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
        attention_mask: torch.Tensor | None = None,
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
