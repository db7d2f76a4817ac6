"""Export lmlab pre-LayerNorm encoder-decoders with learned positions as Blenderbot: BART's layer
names, a LayerNorm before each sublayer, none on the embeddings, one on each stack's output, and
positions counted from 0 (no offset). Blenderbot's LayerNorms use torch's default epsilon and
every projection has a bias (zeros for a bias-free model). lmlab does not load Blenderbot."""

from __future__ import annotations

from torch import nn

from lmlab.interop import bart
from lmlab.interop.bart import layer_tensors
from lmlab.interop.mapping import bias_or_zeros, require_exportable
from lmlab.models import ModelConfig


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder-decoder has a Blenderbot equivalent (BlenderbotForConditionalGeneration)."""
    require_exportable(config, "Blenderbot", bart.layout_mismatches(config, "pre", "Blenderbot"))


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the Blenderbot model equivalent to an lmlab encoder-decoder: BART's
    fields (the layout differs only in where the norms sit, which the model type says)."""
    return {**bart.export_config(config), "model_type": "blenderbot",
            "architectures": ["BlenderbotForConditionalGeneration"]}


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The Hugging Face Blenderbot state dict of an lmlab pre-norm encoder-decoder."""
    sd = model.state_dict()
    out = {"model.shared.weight": sd["encoder.tok_emb.weight"]}
    for stack in ("encoder", "decoder"):
        out[f"model.{stack}.embed_tokens.weight"] = sd["encoder.tok_emb.weight"]
        out[f"model.{stack}.embed_positions.weight"] = sd[f"{stack}.pos_emb.weight"]
        for i in range(config.n_layer):
            out.update(layer_tensors(sd, f"{stack}.blocks.{i}.", f"model.{stack}.layers.{i}.", stack == "decoder", config.d_model))
        out[f"model.{stack}.layer_norm.weight"] = sd[f"{stack}.final_norm.weight"]
        out[f"model.{stack}.layer_norm.bias"] = bias_or_zeros(sd, f"{stack}.final_norm")
    out["final_logits_bias"] = bias_or_zeros(sd, "lm_head").reshape(1, -1)
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
