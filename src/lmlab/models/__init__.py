"""Model configs, backbones, heads and baselines; :func:`build_model` picks one from a config."""

from __future__ import annotations

from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import ModelConfig, MoEConfig
from lmlab.models.decoder import DecoderLM
from lmlab.models.decoder_classifier import DecoderClassifier
from lmlab.models.encoder import EncoderClassifier, EncoderMLM, EncoderModel
from lmlab.models.encoder_decoder import EncoderDecoderLM
from lmlab.models.rnn import GRULM, GRUSeq2Seq
from lmlab.models.inspection import auxiliary_loss, count_parameters, expert_utilisation, parameter_counts

MODELS: dict[tuple[str, str, str], type[nn.Module]] = {
    ("transformer", "decoder", "lm"): DecoderLM,
    ("transformer", "decoder", "classifier"): DecoderClassifier,
    ("transformer", "encoder", "lm"): EncoderMLM,
    ("transformer", "encoder", "classifier"): EncoderClassifier,
    ("transformer", "encoder", "none"): EncoderModel,
    ("transformer", "encoder-decoder", "lm"): EncoderDecoderLM,
    ("gru", "decoder", "lm"): GRULM,
    ("gru", "encoder-decoder", "lm"): GRUSeq2Seq,
}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model a (validated) config describes: ``(arch, backbone, head)``."""
    config.validate()
    if config.vocab_size < 1:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building")
    key = (config.arch, config.backbone, config.head)
    if key not in MODELS:
        valid = "; ".join(f"arch={a} backbone={b} head={h}" for a, b, h in MODELS)
        raise LmlabError(f"no model for arch={key[0]} backbone={key[1]} head={key[2]}; valid: {valid}")
    return MODELS[key](config)


__all__ = [
    "MODELS",
    "DecoderClassifier",
    "DecoderLM",
    "EncoderClassifier",
    "EncoderDecoderLM",
    "EncoderMLM",
    "EncoderModel",
    "GRULM",
    "GRUSeq2Seq",
    "ModelConfig",
    "MoEConfig",
    "auxiliary_loss",
    "build_model",
    "count_parameters",
    "expert_utilisation",
    "parameter_counts",
]
