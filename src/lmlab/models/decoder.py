"""The decoder-only Transformer: embed → pre-norm blocks → final norm → tied LM head."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.layers.attention import MultiHeadAttention
from lmlab.layers.feedforward import build_feedforward
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.norms import build_norm
from lmlab.layers.positional import LearnedPositionalEmbedding
from lmlab.models.config import ModelConfig


class DecoderBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = build_norm(config.norm, config.d_model, config.bias)
        self.attn = MultiHeadAttention(
            config.d_model, config.n_head, config.n_kv_heads, config.bias, config.dropout
        )
        self.ffn_norm = build_norm(config.norm, config.d_model, config.bias)
        self.ffn = build_feedforward(config.ffn, config.d_model, config.ffn_width, config.bias, config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C)."""
        x = x + self.attn(self.attn_norm(x), cache, start_pos)
        return x + self.ffn(self.ffn_norm(x))


class DecoderCache(nn.Module):
    """One :class:`KVCache` per block, for incremental decoding."""

    def __init__(self, layers: list[KVCache]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len


class DecoderBackbone(nn.Module):
    """Token + position embeddings, a stack of causal blocks, a final norm; returns hidden states."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = LearnedPositionalEmbedding(config.context_length, config.d_model)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))
        self.final_norm = build_norm(config.norm, config.d_model, config.bias)

    def forward(self, ids: torch.Tensor, cache: DecoderCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """ids: (B, T) at positions [start_pos, start_pos+T) → hidden states (B, T, C)."""
        T = ids.size(1)
        x = self.tok_emb(ids) + self.pos_emb(start_pos, T)  # (B, T, C)
        x = self.emb_dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, start_pos)
        return self.final_norm(x)


class DecoderLM(nn.Module):
    """Decoder-only language model: backbone + LM head (tied to the token embedding by default).

    ``model(ids)`` returns logits (B, T, V). For incremental decoding, make a cache with
    :meth:`new_cache` and pass it with the position of the first token in ``ids``; the cache is
    filled in place.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DecoderBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.tok_emb.weight
        self.apply(_gpt2_init)
        _scale_residual_projections(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        """Longest sequence the model can attend over (its learned positions)."""
        return self.config.context_length

    def forward(self, ids: torch.Tensor, cache: DecoderCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """ids: (B, T) → logits (B, T, V)."""
        return self.lm_head(self.backbone(ids, cache, start_pos))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> DecoderCache:
        """An empty static KV cache for ``batch_size`` sequences of up to ``max_len`` positions."""
        cfg = self.config
        weight = self.lm_head.weight
        max_len = min(max_len or cfg.context_length, cfg.context_length)
        kv_heads = cfg.n_kv_heads or cfg.n_head
        head_dim = cfg.d_model // cfg.n_head
        return DecoderCache(
            [
                KVCache(batch_size, kv_heads, max_len, head_dim, weight.dtype, weight.device)
                for _ in range(cfg.n_layer)
            ]
        )


def _gpt2_init(module: nn.Module) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def _scale_residual_projections(model: nn.Module, n_layer: int) -> None:
    """GPT-2: projections into the residual stream start at std 0.02/√(2·n_layer)."""
    std = 0.02 / math.sqrt(2 * n_layer)
    for name, param in model.named_parameters():
        if name.endswith("out_proj.weight") or name.endswith("down.weight"):
            nn.init.normal_(param, std=std)
