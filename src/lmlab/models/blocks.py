"""What every Transformer backbone is made of: blocks, a stack with embeddings and norms, and the
registries that turn config names into layers (positions, feed-forwards, MoE)."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

from lmlab.layers.dropout import Dropout
from lmlab.layers.attention import CrossAttention, MultiHeadAttention
from lmlab.layers.feedforward import build_feedforward
from lmlab.layers.kv_cache import CrossAttentionCache, KVCache
from lmlab.layers.masks import AttentionMask, build_attention_mask
from lmlab.layers.moe import MoEFeedForward
from lmlab.layers.norms import PLACEMENTS, build_norm
from lmlab.layers.positional import (
    ALiBiPositionalEncoding,
    LearnedPositionalEmbedding,
    PositionalEncoding,
    Rotary,
    RotaryPositionalEncoding,
    SinusoidalPositionalEncoding,
    T5RelativePositionBias,
)
from lmlab.models.config import ModelConfig

POSITIONAL: dict[str, Callable[[ModelConfig, bool], PositionalEncoding]] = {
    "learned": lambda c, causal: LearnedPositionalEmbedding(c.context_length, c.d_model),
    "sinusoidal": lambda c, causal: SinusoidalPositionalEncoding(c.context_length, c.d_model),
    "sinusoidal-halves": lambda c, causal: SinusoidalPositionalEncoding(c.context_length, c.d_model, halves=True),
    "rope": lambda c, causal: RotaryPositionalEncoding(c.head_dim, c.context_length, c.rope_base, c.rope_fraction),
    "alibi": lambda c, causal: ALiBiPositionalEncoding(c.n_head),
    "t5": lambda c, causal: T5RelativePositionBias(c.n_head, not causal, c.t5_num_buckets, c.t5_max_distance),
    "none": lambda c, causal: PositionalEncoding(),
}


def build_positional(config: ModelConfig, causal: bool) -> PositionalEncoding:
    """The positional encoding ``config.position`` names (T5 buckets are causal in decoders)."""
    return POSITIONAL[config.position](config, causal)


def build_block_ffn(config: ModelConfig, index: int) -> nn.Module:
    """Block ``index``'s feed-forward: dense, or MoE when ``config.moe`` says this layer is one."""
    def dense() -> nn.Module:
        return build_feedforward(config.ffn, config.d_model, config.ffn_width, config.bias, config.dropout)

    moe = config.moe
    if not moe.is_moe_layer(index):
        return dense()
    return MoEFeedForward(
        [dense() for _ in range(moe.num_experts)], config.d_model, moe.router, moe.top_k,
        moe.capacity_factor, moe.drop_tokens, moe.balance_loss_weight, moe.z_loss_weight,
    )


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward, each a residual sublayer with its norm placed pre or post."""

    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.residual = PLACEMENTS[config.norm_placement].residual
        self.attn_norm = build_norm(config.norm, config.d_model, config.bias, config.norm_eps)
        self.attn = MultiHeadAttention(config.d_model, config.n_head, config.n_kv_heads, config.bias, config.dropout, config.head_size)
        self.ffn_norm = build_norm(config.norm, config.d_model, config.bias, config.norm_eps)
        self.ffn = build_block_ffn(config, index)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rotary: Rotary | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) → (B, T, C), or (B, t, C) at the positions ``rows`` only: a head that reads
        only those (a classifier's first token) needs no feed-forward for the others."""
        x = self.residual(x, self.attn_norm, lambda h: self.attn(h, cache, start_pos, mask, rotary))
        if rows is not None:
            x = x[:, rows]  # (B, t, C)
        return self.residual(x, self.ffn_norm, self.ffn)


class CrossAttentionBlock(TransformerBlock):
    """Causal self-attention, cross-attention over the encoder output, then feed-forward."""

    def __init__(self, config: ModelConfig, index: int):
        super().__init__(config, index)
        self.cross_norm = build_norm(config.norm, config.d_model, config.bias, config.norm_eps)
        self.cross_attn = CrossAttention(config.d_model, config.n_head, config.n_kv_heads, config.bias, config.dropout, config.head_size)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        memory: torch.Tensor,
        memory_mask: AttentionMask,
        rotary: Rotary | None = None,
        cache: "LayerCache | None" = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """x: (B, T, C) and memory (B, S, C) → (B, T, C)."""
        self_cache, cross_cache = (cache.self_attn, cache.cross_attn) if cache is not None else (None, None)
        x = self.residual(x, self.attn_norm, lambda h: self.attn(h, self_cache, start_pos, mask, rotary))
        x = self.residual(x, self.cross_norm, lambda h: self.cross_attn(h, memory, memory_mask, cross_cache))
        return self.residual(x, self.ffn_norm, self.ffn)


class LayerCache(nn.Module):
    """An encoder-decoder layer's cache: its self-attention keys/values and the encoder output's."""

    def __init__(self, self_attn: KVCache):
        super().__init__()
        self.self_attn = self_attn
        self.cross_attn = CrossAttentionCache()


class TransformerStack(nn.Module):
    """Token embedding + positional encoding, a stack of blocks, and the norms the placement asks
    for (on the embeddings for post-norm, on the output for pre-norm). The backbones add
    ``forward``."""

    def __init__(self, config: ModelConfig, causal: bool, blocks: list[nn.Module], tok_emb: nn.Embedding | None = None):
        super().__init__()
        placement = PLACEMENTS[config.norm_placement]
        norm = partial(build_norm, config.norm, config.d_model, config.bias, config.norm_eps)
        self.config = config
        self.causal = causal
        self.tok_emb = tok_emb if tok_emb is not None else nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = build_positional(config, causal)
        self.emb_norm = norm() if placement.norm_embeddings else nn.Identity()
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = norm() if placement.norm_output else nn.Identity()

    def embed(self, ids: torch.Tensor, start_pos: int = 0, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) at positions [start_pos, start_pos+T) (or ``position_ids`` (B, T)) → embeddings (B, T, C)."""
        x = self.pos_emb.embed(self.tok_emb(ids), start_pos, position_ids)  # (B, T, C)
        return self.emb_dropout(self.emb_norm(x))

    def self_attention_mask(
        self,
        q_len: int,
        k_len: int,
        key_padding: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
    ) -> AttentionMask:
        """The mask every block's self-attention uses, with this stack's position bias."""
        bias = self.pos_emb.attention_bias(q_len, k_len)  # (1, H, T, S) or None
        return build_attention_mask(
            q_len, k_len, causal=self.causal, key_padding=key_padding, prefix_lengths=prefix_lengths,
            position_bias=bias, device=self.tok_emb.weight.device,
        )


def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights and zero biases; projections into the residual
    stream (attention ``out_proj``, FFN ``down``) start at std 0.02/√(2·n_layer)."""
    model.apply(_normal_init)
    std = 0.02 / math.sqrt(2 * n_layer)
    for name, param in model.named_parameters():
        if name.endswith("out_proj.weight") or name.endswith("down.weight"):
            nn.init.normal_(param, std=std)


def _normal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
