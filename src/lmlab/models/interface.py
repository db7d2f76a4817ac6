"""What a model declares about itself, so that generation, the CLI and training use it without
probing it (no ``hasattr``, no signature inspection).

Every model lmlab builds is a :class:`LanguageModel`: it says its ``structure`` (decoder, encoder,
encoder-decoder, or decoder-classifier: a causal stack scoring classes, which does not generate), its context (``max_positions``, None for a recurrent model) and whether it
takes padding masks. The two that generate add what decoding needs: a decoder
(:class:`DecoderModel`) runs ids to hidden states and has an LM head; an encoder-decoder
(:class:`EncoderDecoderModel`) encodes once and decodes step by step over the encoder's output.
Both make the cache (:class:`DecodingCache`) their decoding writes into.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.layers.kv_cache import KVCache
from lmlab.models.config import ModelConfig

DECODER, ENCODER, ENCODER_DECODER = "decoder", "encoder", "encoder-decoder"
DECODER_CLASSIFIER = "decoder-classifier"  # a decoder stack with a classification head: no LM head, no decoding
GENERATIVE = (DECODER, ENCODER_DECODER)


class DecodingCache(Protocol):
    """The state a decoding model carries between steps, for a batch of rows."""

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` (B,) of before, over the first ``length`` positions."""

    def copy_rows_from(self, other: "DecodingCache", index: torch.Tensor) -> None:
        """Rows become rows ``index`` of ``other`` (a prompt prefilled once, then copied)."""

    def kv_caches(self) -> list[KVCache]:
        """The self-attention key/value caches it holds, one per layer (none for a GRU)."""


class LanguageModel(Protocol):
    """Every model: its config, structure, context length and whether it takes padding masks."""

    config: ModelConfig
    structure: str  # DECODER, ENCODER, ENCODER_DECODER or DECODER_CLASSIFIER
    takes_padding: bool  # accepts attention_mask (and, for decoders, position_ids) for padded batches

    @property
    def max_positions(self) -> int | None:
        """The longest sequence it reads (its training context); None when unbounded."""


class DecoderModel(LanguageModel, Protocol):
    """A decoder-only language model: ids → hidden states → ``lm_head`` → logits."""

    lm_head: nn.Module

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecodingCache:
        """An empty cache for ``batch_size`` rows of up to ``max_len`` positions."""

    def hidden_states(
        self,
        ids: torch.Tensor,
        cache: DecodingCache | None = None,
        start_pos: int = 0,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids (B, T) at positions [start_pos, start_pos+T) → hidden states (B, T, C)."""


class EncoderDecoderModel(LanguageModel, Protocol):
    """An encoder-decoder: ``encode`` once, then ``decode`` step by step over its output."""

    lm_head: nn.Module
    memory_batch_dim: int  # the batch dimension of what ``encode`` returns

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecodingCache:
        """An empty decoder cache for ``batch_size`` rows of up to ``max_len`` positions."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S) → the encoder's output ("memory")."""

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: DecodingCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """decoder_input_ids (B, T) at [start_pos, start_pos+T) over memory → logits (B, T, V);
        attention_mask is the encoder's padding."""


def is_encoder_decoder(model: LanguageModel) -> bool:
    """Whether ``model`` encodes an input and decodes an output (T5, BART, the GRU seq2seq)."""
    return model.structure == ENCODER_DECODER


def require_generative(model: LanguageModel) -> None:
    """:class:`LmlabError` unless ``model`` generates text (a decoder or an encoder-decoder)."""
    if model.structure == ENCODER:
        raise LmlabError(
            f"{type(model).__name__} is an encoder: it does not generate text; "
            "use it with `lmlab embed`, or give a decoder or encoder-decoder model"
        )
    if model.structure not in GENERATIVE:
        raise LmlabError(
            f"{type(model).__name__} is a classifier: it does not generate text; "
            "use it with `lmlab classify`, or give a decoder or encoder-decoder model"
        )
