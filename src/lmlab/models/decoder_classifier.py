"""A decoder-only Transformer as a sequence classifier: causal blocks, then a linear score of
the hidden state at each row's last real token (GPT-2's and Llama's ``…ForSequenceClassification``)."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.models.blocks import init_weights
from lmlab.models.config import ModelConfig
from lmlab.models.decoder import DecoderBackbone
from lmlab.models.heads import last_token
from lmlab.models.interface import DECODER_CLASSIFIER


class DecoderClassifier(nn.Module):
    """Decoder backbone + a bias-free score layer on the last real token (``config.num_labels``).

    ``model(ids, attention_mask=None)`` returns class logits (B, num_labels). Its ``backbone``
    has :class:`~lmlab.models.DecoderLM`'s parameter names, so a pretrained decoder loads into
    it; ``config.pooling`` is not used (a causal model's summary is its last token). It does not
    generate: its structure is ``decoder-classifier``.
    """

    structure = DECODER_CLASSIFIER
    takes_padding = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DecoderBackbone(config)
        self.classifier = nn.Linear(config.d_model, config.num_labels, bias=False)
        init_weights(self, config.n_layer)

    @property
    def max_positions(self) -> int:
        return self.config.context_length

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) right-padded, attention_mask (B, T) False at padding → class logits (B, num_labels)."""
        hidden = self.backbone(ids, attention_mask=attention_mask)  # (B, T, C)
        return self.classifier(last_token(hidden, attention_mask))  # (B, K)
