"""The decoder-only Transformer: embed → causal blocks → final norm → tied LM head."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.layers.kv_cache import KVCache, reorder_rows
from lmlab.models.blocks import TransformerBlock, TransformerStack, init_weights
from lmlab.models.config import ModelConfig
from lmlab.models.interface import DECODER


class DecoderCache(nn.Module):
    """One :class:`KVCache` per block, for incremental decoding."""

    def __init__(self, layers: list[KVCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    def copy_rows_from(self, other: "DecoderCache", index: torch.Tensor) -> None:
        """Rows become rows ``index`` of ``other`` (over its positions), in every layer."""
        for mine, theirs in zip(self.layers, other.layers):
            mine.copy_rows_from(theirs, index)

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` of before, in every layer, in place (beam search); only the
        first ``length`` positions (default: all)."""
        reorder_rows(self.kv_caches(), index, length)

    def kv_caches(self) -> list[KVCache]:
        """Every layer's self-attention cache, in order."""
        return list(self.layers)


class DecoderBackbone(TransformerStack):
    """Token + position embeddings, a stack of causal blocks, a final norm; returns hidden states."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, causal=True, blocks=[TransformerBlock(config, i) for i in range(config.n_layer)])

    def forward(
        self,
        ids: torch.Tensor,
        cache: DecoderCache | None = None,
        start_pos: int = 0,
        attention_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: (B, T) at positions [start_pos, start_pos+T) → hidden states (B, T, C).

        attention_mask: (B, start_pos+T) bool, False at padding (over every position so far).
        prefix_lengths: (B,) the first P positions attend bidirectionally (prefix LM).
        position_ids: (B, T) the positions the encodings use, per row (left padding); the cache
            slots are still [start_pos, start_pos+T).
        """
        T = ids.size(1)
        x = self.embed(ids, start_pos, position_ids)  # (B, T, C)
        mask = self.self_attention_mask(T, start_pos + T, attention_mask, prefix_lengths)
        rotary = self.pos_emb.rotary(start_pos, T, position_ids)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rotary, cache.layers[i] if cache is not None else None, start_pos)
        return self.final_norm(x)


class DecoderLM(nn.Module):
    """Decoder-only language model: backbone + LM head (tied to the token embedding by default).

    ``model(ids)`` returns logits (B, T, V). For incremental decoding, make a cache with
    :meth:`new_cache` and pass it with the position of the first token in ``ids``; the cache is
    filled in place. ``attention_mask`` (padding) and ``prefix_lengths`` (prefix LM) are optional
    keywords, see :meth:`DecoderBackbone.forward`. A :class:`~lmlab.models.interface.DecoderModel`.
    """

    structure = DECODER
    takes_padding = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DecoderBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.tok_emb.weight
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        """Longest sequence one cache holds (the training context)."""
        return self.config.context_length

    def forward(
        self,
        ids: torch.Tensor,
        cache: DecoderCache | None = None,
        start_pos: int = 0,
        *,
        attention_mask: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: (B, T) → logits (B, T, V)."""
        return self.lm_head(self.backbone(ids, cache, start_pos, attention_mask, prefix_lengths, position_ids))

    def hidden_states(
        self,
        ids: torch.Tensor,
        cache: DecoderCache | None = None,
        start_pos: int = 0,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids: (B, T) → the final norm's output (B, T, C), what the LM head reads."""
        return self.backbone(ids, cache, start_pos, attention_mask, None, position_ids)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecoderCache:
        """An empty static KV cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        return DecoderCache(new_kv_caches(self.config, self.lm_head.weight, batch_size, max_len))


def new_kv_caches(config: ModelConfig, like: torch.Tensor, batch_size: int, max_len: int | None) -> list[KVCache]:
    """One empty :class:`KVCache` per layer, of ``like``'s dtype and device, capped at the context."""
    max_len = min(max_len or config.context_length, config.context_length)
    kv_heads = config.n_kv_heads or config.n_head
    return [
        KVCache(batch_size, kv_heads, max_len, config.head_dim, like.dtype, like.device)
        for _ in range(config.n_layer)
    ]
