"""The encoder-only (bidirectional) Transformer with a masked-LM head or a classification head."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.layers.moe import MoEFeedForward
from lmlab.models.blocks import TransformerBlock, TransformerStack, init_weights
from lmlab.models.config import ModelConfig
from lmlab.models.heads import ClassificationHead, MLMHead
from lmlab.models.interface import ENCODER


class EncoderBackbone(TransformerStack):
    """Token + position embeddings and a stack of bidirectional blocks; returns hidden states."""

    def __init__(self, config: ModelConfig, tok_emb: nn.Embedding | None = None):
        blocks = [TransformerBlock(config, i) for i in range(config.n_layer)]
        super().__init__(config, causal=False, blocks=blocks, tok_emb=tok_emb)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, positions: slice | None = None
    ) -> torch.Tensor:
        """ids: (B, T) → hidden states (B, T, C); attention_mask (B, T) is False at padding.

        positions: only these positions' states are returned (B, t, C), and the last block's
        feed-forward runs on them alone (keys and values still come from every position).
        """
        T = ids.size(1)
        x = self.embed(ids)  # (B, T, C)
        mask = self.self_attention_mask(T, T, attention_mask)
        rotary = self.pos_emb.rotary(0, T)
        *inner, last = self.blocks
        for block in inner:
            x = block(x, mask, rotary)
        if positions is None:
            return self.final_norm(last(x, mask, rotary))
        return self.final_norm(last(x, mask, rotary, rows=positions))  # (B, t, C)


class EncoderMLM(nn.Module):
    """BERT-style encoder with a masked-LM head (its output projection tied to the embedding).

    ``model(ids, attention_mask=None)`` returns logits (B, T, V).
    """

    structure = ENCODER
    takes_padding = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = EncoderBackbone(config)
        self.mlm_head = MLMHead(config.d_model, config.vocab_size, config.norm, config.norm_eps)
        if config.tie_embeddings:
            self.mlm_head.decoder.weight = self.backbone.tok_emb.weight
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        return self.config.context_length

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) → logits (B, T, V); attention_mask (B, T) is False at padding."""
        return self.mlm_head(self.backbone(ids, attention_mask))


class EncoderClassifier(nn.Module):
    """Encoder with a sequence-classification head (``config.pooling``, ``config.num_labels``).

    ``model(ids, attention_mask=None)`` returns class logits (B, num_labels). Its ``backbone``
    has the same parameter names as :class:`EncoderMLM`'s, so a pretrained encoder loads into it.
    """

    structure = ENCODER
    takes_padding = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = EncoderBackbone(config)
        self.classifier = ClassificationHead(config.d_model, config.num_labels, config.pooling, config.dropout)
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        return self.config.context_length

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) → class logits (B, num_labels)."""
        if self.classifier.reads_first_token_only and not isinstance(self.backbone.blocks[-1].ffn, MoEFeedForward):
            return self.classifier(self.backbone(ids, attention_mask, positions=slice(0, 1)))  # (B, 1, C) in
        return self.classifier(self.backbone(ids, attention_mask), attention_mask)


class EncoderModel(nn.Module):
    """A bare encoder (``head="none"``): ``model(ids, attention_mask=None)`` returns the hidden
    states (B, T, C), e.g. for sentence embeddings. Same parameter names as :class:`EncoderMLM`'s backbone."""

    structure = ENCODER
    takes_padding = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = EncoderBackbone(config)
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        return self.config.context_length

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) → hidden states (B, T, C)."""
        return self.backbone(ids, attention_mask)
