"""Model configs, backbones, heads and baselines; :func:`build_model` picks one from a config."""

from __future__ import annotations

from torch import nn

from lmlab.models.config import ModelConfig
from lmlab.models.decoder import DecoderLM
from lmlab.models.rnn import GRULM

ARCHITECTURES = {"transformer": DecoderLM, "gru": GRULM}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model a (validated) config describes."""
    config.validate()
    if config.vocab_size < 1:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building")
    return ARCHITECTURES[config.arch](config)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "DecoderLM", "GRULM", "ModelConfig", "build_model", "count_parameters"]
