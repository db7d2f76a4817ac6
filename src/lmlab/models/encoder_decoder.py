"""The encoder-decoder Transformer (T5 / BART shape): a bidirectional encoder, a causal decoder
that cross-attends to the encoder output, and an LM head."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.layers.kv_cache import KVCache, reorder_rows
from lmlab.layers.masks import build_attention_mask
from lmlab.models.blocks import CrossAttentionBlock, LayerCache, TransformerStack, init_weights
from lmlab.models.config import ModelConfig
from lmlab.models.decoder import new_kv_caches
from lmlab.models.interface import ENCODER_DECODER
from lmlab.models.encoder import EncoderBackbone


class EncoderDecoderCache(nn.Module):
    """Per decoder layer: self-attention keys/values so far and the encoder output's keys/values."""

    def __init__(self, layers: list[LayerCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def max_len(self) -> int:
        return self.layers[0].self_attn.max_len

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` of before, in place (beam search). The encoder keys/values
        are left alone: beams of one input share them, and beams never move between inputs."""
        reorder_rows(self.kv_caches(), index, length)

    def copy_rows_from(self, other: "EncoderDecoderCache", index: torch.Tensor) -> None:
        """Rows become rows ``index`` of ``other``'s self-attention caches (over its positions)."""
        for mine, theirs in zip(self.kv_caches(), other.kv_caches()):
            mine.copy_rows_from(theirs, index)

    def kv_caches(self) -> list[KVCache]:
        """Every decoder layer's self-attention cache, in order."""
        return [layer.self_attn for layer in self.layers]


class CrossDecoderBackbone(TransformerStack):
    """The decoder stack: causal self-attention and cross-attention in every block."""

    def __init__(self, config: ModelConfig, tok_emb: nn.Embedding | None = None):
        blocks = [CrossAttentionBlock(config, i) for i in range(config.n_layer)]
        super().__init__(config, causal=True, blocks=blocks, tok_emb=tok_emb)

    def forward(
        self,
        ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        start_pos: int = 0,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: (B, T) at positions [start_pos, start_pos+T), memory (B, S, C) → hidden (B, T, C).

        memory_mask: (B, S) False at encoder padding; attention_mask: (B, start_pos+T) False at
        decoder padding.
        """
        T = ids.size(1)
        x = self.embed(ids, start_pos)  # (B, T, C)
        mask = self.self_attention_mask(T, start_pos + T, attention_mask)
        cross_mask = build_attention_mask(T, memory.size(1), causal=False, key_padding=memory_mask)
        rotary = self.pos_emb.rotary(start_pos, T)
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            x = block(x, mask, memory, cross_mask, rotary, layer_cache, start_pos)
        return self.final_norm(x)


class EncoderDecoderLM(nn.Module):
    """Encoder-decoder language model.

    - ``model(input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None)``
      → logits (B, T_dec, V) (teacher forcing);
    - ``encode(input_ids, attention_mask=None)`` → memory (B, S, C);
    - ``decode(decoder_input_ids, memory, attention_mask=None, cache=None, start_pos=0)`` →
      logits, incrementally with a cache from :meth:`new_cache` (one cache per encoder output).

    ``attention_mask`` is always the encoder's padding mask (False at padding).
    ``config.share_embeddings`` gives both stacks one token embedding; ``config.tie_embeddings``
    ties the LM head to the decoder's. An :class:`~lmlab.models.interface.EncoderDecoderModel`.
    """

    structure = ENCODER_DECODER
    takes_padding = True
    memory_batch_dim = 0  # memory is (B, S, C)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = EncoderBackbone(config)
        self.decoder = CrossDecoderBackbone(config, self.encoder.tok_emb if config.share_embeddings else None)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=config.head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.tok_emb.weight
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        """Longest input or output sequence (the training context)."""
        return self.config.context_length

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, S), decoder_input_ids (B, T) → logits (B, T, V)."""
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask=decoder_attention_mask)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, S) → encoder output (B, S, C)."""
        return self.encoder(input_ids, attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        start_pos: int = 0,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """decoder_input_ids (B, T) at [start_pos, start_pos+T) over memory (B, S, C) → logits (B, T, V)."""
        hidden = self.decoder(decoder_input_ids, memory, attention_mask, cache, start_pos, decoder_attention_mask)
        return self.lm_head(hidden)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> EncoderDecoderCache:
        """An empty decoder cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        kv = new_kv_caches(self.config, self.lm_head.weight, batch_size, max_len)
        return EncoderDecoderCache([LayerCache(layer) for layer in kv])
