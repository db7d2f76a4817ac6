"""Export lmlab pre-LayerNorm encoder-decoders with learned positions as Blenderbot: BART's layer
names, a LayerNorm before each sublayer, none on the embeddings, one on each stack's output, and
positions counted from 0 (no offset). Blenderbot's LayerNorms use torch's default epsilon and
every projection has a bias (zeros for a bias-free model). lmlab does not load Blenderbot."""

from __future__ import annotations

from torch import nn

from lmlab.interop import bart
from lmlab.interop.bart import BART_NORM_EPS, layer_tensors
from lmlab.interop.mapping import LMLAB_TO_HF_ACTIVATION, bias_or_zeros, config_mismatches, require_exportable
from lmlab.models import ModelConfig


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder-decoder has a Blenderbot equivalent (BlenderbotForConditionalGeneration)."""
    wanted = {
        "arch": "transformer", "backbone": "encoder-decoder", "position": "learned", "norm": "layernorm",
        "norm_placement": "pre", "share_embeddings": True,
    }
    bad = config_mismatches(config, wanted)
    if config.ffn not in LMLAB_TO_HF_ACTIVATION:
        bad.append(f"ffn={config.ffn!r}")
    if (config.n_kv_heads or config.n_head) != config.n_head or config.head_size not in (None, config.d_model // config.n_head):
        bad.append("grouped or resized heads")
    if config.norm_eps != BART_NORM_EPS:
        bad.append(f"norm_eps={config.norm_eps!r} (Blenderbot uses {BART_NORM_EPS})")
    require_exportable(config, "Blenderbot", bad)


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
