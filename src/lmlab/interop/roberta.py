"""Export lmlab encoders in RoBERTa's layout: RoBERTa (post-LayerNorm, like BERT) and
XLM-RoBERTa-XL (pre-LayerNorm: a norm before each sublayer, none on the embeddings, one on the
output — lmlab's ``norm_placement="pre"`` encoder).

Both number positions from ``pad_token_id + 1`` and give padding tokens the position
``pad_token_id``: the exported position table is lmlab's after ``pad_id + 1`` zero rows, which gives
the same positions for unpadded and right-padded inputs. Heads: the MLM head as ``lm_head``, a
classifier pooling the first token through dense → tanh as ``classifier.dense`` / ``out_proj``.
(Loading RoBERTa checkpoints is :mod:`lmlab.interop.bert`'s job.)
"""

from __future__ import annotations

from torch import nn

from lmlab.interop.bert import LAYER_NAMES, embedding_tensors, encoder_mismatches, layer_tensors
from lmlab.interop.bert import export_config as bert_config
from lmlab.interop.mapping import bias_or_zeros, require_exportable
from lmlab.models import ModelConfig

ROBERTA_ARCHITECTURES = {"lm": "RobertaForMaskedLM", "classifier": "RobertaForSequenceClassification", "none": "RobertaModel"}
XL_ARCHITECTURES = {"lm": "XLMRobertaXLForMaskedLM", "classifier": "XLMRobertaXLForSequenceClassification",
                    "none": "XLMRobertaXLModel"}
# lmlab pre-norm block module → XLM-RoBERTa-XL layer module
XL_LAYER_NAMES = (("attn_norm", "attention.self_attn_layer_norm"), ("attn.out_proj", "attention.output.dense"),
                  ("ffn_norm", "LayerNorm"), ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"))


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder has a RoBERTa equivalent (post-LayerNorm, as BERT)."""
    require_exportable(config, "RoBERTa", encoder_mismatches(config, "post"))


def check_exportable_xl(config: ModelConfig) -> None:
    """Raise unless the encoder has an XLM-RoBERTa-XL equivalent (pre-LayerNorm)."""
    require_exportable(config, "XLM-RoBERTa-XL", encoder_mismatches(config, "pre"))


def export_config(config: ModelConfig, pad_id: int) -> dict:
    """``config.json`` of the RoBERTa model equivalent to an lmlab encoder."""
    return _positions_from_pad(bert_config(config), config, pad_id) | {
        "model_type": "roberta", "architectures": [ROBERTA_ARCHITECTURES[config.head]],
    }


def export_config_xl(config: ModelConfig, pad_id: int) -> dict:
    """``config.json`` of the XLM-RoBERTa-XL model equivalent to an lmlab pre-norm encoder."""
    return _positions_from_pad(bert_config(config), config, pad_id) | {
        "model_type": "xlm-roberta-xl", "architectures": [XL_ARCHITECTURES[config.head]],
    }


def export_tensors(model: nn.Module, config: ModelConfig, pad_id: int) -> dict:
    """The Hugging Face RoBERTa state dict of an lmlab (post-norm) encoder."""
    sd = model.state_dict()
    prefix = "" if config.head == "none" else "roberta."
    out = _embeddings(sd, config, prefix, pad_id)
    out[prefix + "embeddings.LayerNorm.weight"] = sd["backbone.emb_norm.weight"]
    out[prefix + "embeddings.LayerNorm.bias"] = bias_or_zeros(sd, "backbone.emb_norm")
    for i in range(config.n_layer):
        out.update(layer_tensors(sd, config, f"backbone.blocks.{i}.", f"{prefix}encoder.layer.{i}.", LAYER_NAMES))
    return out | _head_tensors(sd, config)


def export_tensors_xl(model: nn.Module, config: ModelConfig, pad_id: int) -> dict:
    """The Hugging Face XLM-RoBERTa-XL state dict of an lmlab pre-norm encoder."""
    sd = model.state_dict()
    prefix = "" if config.head == "none" else "roberta."
    out = _embeddings(sd, config, prefix, pad_id)
    for i in range(config.n_layer):
        out.update(layer_tensors(sd, config, f"backbone.blocks.{i}.", f"{prefix}encoder.layer.{i}.", XL_LAYER_NAMES))
    out[prefix + "encoder.LayerNorm.weight"] = sd["backbone.final_norm.weight"]
    out[prefix + "encoder.LayerNorm.bias"] = bias_or_zeros(sd, "backbone.final_norm")
    return out | _head_tensors(sd, config)


def _positions_from_pad(values: dict, config: ModelConfig, pad_id: int) -> dict:
    return values | {"pad_token_id": pad_id, "max_position_embeddings": config.context_length + pad_id + 1}


def _embeddings(sd: dict, config: ModelConfig, prefix: str, pad_id: int) -> dict:
    return {prefix + name: tensor for name, tensor in embedding_tensors(sd, config, pad_id + 1).items()}


def _head_tensors(sd: dict, config: ModelConfig) -> dict:
    """RoBERTa's MLM head (``lm_head``) or classification head (``classifier``)."""
    out = {}
    if config.head == "lm":
        for kind in ("weight", "bias"):
            out[f"lm_head.dense.{kind}"] = sd[f"mlm_head.dense.{kind}"]
            out[f"lm_head.layer_norm.{kind}"] = sd[f"mlm_head.norm.{kind}"]
        out["lm_head.bias"] = sd["mlm_head.decoder.bias"]
        out["lm_head.decoder.bias"] = sd["mlm_head.decoder.bias"]
        if not config.tie_embeddings:
            out["lm_head.decoder.weight"] = sd["mlm_head.decoder.weight"]
    elif config.head == "classifier":
        for kind in ("weight", "bias"):
            out[f"classifier.dense.{kind}"] = sd[f"classifier.pooler.0.{kind}"]
            out[f"classifier.out_proj.{kind}"] = sd[f"classifier.classifier.{kind}"]
    return out
