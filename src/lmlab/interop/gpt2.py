"""GPT-2: Hugging Face ``gpt2`` checkpoints ↔ lmlab's default decoder (learned positions,
pre-LayerNorm, GELU). GPT-2 stores its linear layers as ``Conv1D`` (in, out): they are transposed.
A ``GPT2ForSequenceClassification`` checkpoint (a ``score`` layer) ↔
:class:`~lmlab.models.DecoderClassifier`."""

from __future__ import annotations

from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import (
    RuleMap,
    activation,
    bias_or_zeros,
    config_mismatches,
    fill_tensors,
    require_exportable,
    to,
    transpose,
)
from lmlab.interop.weights import TensorSource, load_into
from lmlab.models import ModelConfig, build_model

PREFIXES = ("transformer.",)
IGNORE = ("*attn.bias", "*attn.masked_bias")
SCORE = "score.weight"  # the classifier head of *ForSequenceClassification (GPT-2 and Llama)


def classifier_fields(source: TensorSource) -> dict:
    """``head`` and ``num_labels`` of a decoder checkpoint: a classifier when it has a score layer."""
    if SCORE not in source.names():
        return {}
    return {"head": "classifier", "num_labels": source.info(SCORE).shape[0]}


def model_config(hf: HFConfig, head: dict | None = None) -> ModelConfig:
    """The lmlab config of a GPT-2 ``config.json`` (``head``: :func:`classifier_fields`)."""
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise LmlabError(f"{hf.path}: GPT-2 option {flag}=true is not supported by lmlab")
    if hf.get("scale_attn_weights", True) is False:
        raise LmlabError(f"{hf.path}: GPT-2 option scale_attn_weights=false is not supported by lmlab")
    return ModelConfig(
        backbone="decoder",
        vocab_size=hf.require("vocab_size"),
        n_layer=hf.require("n_layer"),
        n_head=hf.require("n_head"),
        d_model=hf.require("n_embd"),
        d_ff=hf.get("n_inner") or 4 * hf.require("n_embd"),
        context_length=hf.require("n_positions"),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        bias=True,
        position="learned",
        norm="layernorm",
        norm_placement="pre",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        ffn=activation(hf.get("activation_function", "gelu_new"), str(hf.path)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **(head or {}),
    )


def name_map(config: ModelConfig) -> RuleMap:
    """GPT-2 tensor names → lmlab names."""
    b = "backbone.blocks.{0}."
    rules = [
        (r"wte\.weight", to("backbone.tok_emb.weight")),
        (r"wpe\.weight", to("backbone.pos_emb.weight")),
        (r"h\.(\d+)\.ln_1\.(weight|bias)", to(b + "attn_norm.{1}")),
        (r"h\.(\d+)\.ln_2\.(weight|bias)", to(b + "ffn_norm.{1}")),
        (r"h\.(\d+)\.attn\.c_attn\.weight", to(b + "attn.qkv.weight", transpose)),
        (r"h\.(\d+)\.attn\.c_attn\.bias", to(b + "attn.qkv.bias")),
        (r"h\.(\d+)\.attn\.c_proj\.weight", to(b + "attn.out_proj.weight", transpose)),
        (r"h\.(\d+)\.attn\.c_proj\.bias", to(b + "attn.out_proj.bias")),
        (r"h\.(\d+)\.mlp\.c_fc\.weight", to(b + "ffn.up.weight", transpose)),
        (r"h\.(\d+)\.mlp\.c_fc\.bias", to(b + "ffn.up.bias")),
        (r"h\.(\d+)\.mlp\.c_proj\.weight", to(b + "ffn.down.weight", transpose)),
        (r"h\.(\d+)\.mlp\.c_proj\.bias", to(b + "ffn.down.bias")),
        (r"ln_f\.(weight|bias)", to("backbone.final_norm.{0}")),
    ]
    if config.head == "classifier":
        rules.append((r"score\.weight", to("classifier.weight")))
    elif not config.tie_embeddings:
        rules.append((r"lm_head\.weight", to("lm_head.weight")))
    return RuleMap(rules, PREFIXES)


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a GPT-2 checkpoint and stream its weights in."""
    config = model_config(hf, classifier_fields(source))
    model = build_model(config)
    ignore = IGNORE + (("lm_head.weight",) if config.tie_embeddings else ())
    load_into(fill_tensors(model), source, name_map(config), ignore=ignore)
    return model, config


# ---------------------------------------------------------------- export


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the GPT-2 model equivalent to an lmlab decoder."""
    from lmlab.interop.mapping import LMLAB_TO_HF_ACTIVATION

    return {
        "model_type": "gpt2",
        "architectures": ["GPT2ForSequenceClassification" if config.head == "classifier" else "GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.ffn_width,
        "activation_function": LMLAB_TO_HF_ACTIVATION[config.ffn],
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
    }


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the decoder has a GPT-2 equivalent (a bias-free one is written with zero biases);
    an LM head or a last-token classifier."""
    wanted = {
        "arch": "transformer", "backbone": "decoder", "position": "learned", "norm": "layernorm",
        "norm_placement": "pre", "rope_fraction": 1.0,
    }
    bad = config_mismatches(config, wanted)
    if config.head not in ("lm", "classifier"):
        bad.append(f"head={config.head!r}")
    if config.ffn not in ("gelu", "gelu-tanh", "relu", "silu"):
        bad.append(f"ffn={config.ffn!r}")
    if (config.n_kv_heads or config.n_head) != config.n_head:
        bad.append(f"n_kv_heads={config.n_kv_heads}")
    require_exportable(config, "GPT-2", bad)


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The GPT-2 state dict (``transformer.``-prefixed, Conv1D layout) of an lmlab decoder; zero
    biases where the decoder has none."""
    out = {}
    sd = model.state_dict()
    out["transformer.wte.weight"] = sd["backbone.tok_emb.weight"]
    out["transformer.wpe.weight"] = sd["backbone.pos_emb.weight"]
    for i in range(config.n_layer):
        src, dst = f"backbone.blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs, conv in (
            ("attn_norm", "ln_1", False), ("ffn_norm", "ln_2", False), ("attn.qkv", "attn.c_attn", True),
            ("attn.out_proj", "attn.c_proj", True), ("ffn.up", "mlp.c_fc", True), ("ffn.down", "mlp.c_proj", True),
        ):
            weight = sd[src + ours + ".weight"]
            out[dst + theirs + ".weight"] = weight.t() if conv else weight
            out[dst + theirs + ".bias"] = bias_or_zeros(sd, src + ours)
    out["transformer.ln_f.weight"] = sd["backbone.final_norm.weight"]
    out["transformer.ln_f.bias"] = bias_or_zeros(sd, "backbone.final_norm")
    if config.head == "classifier":
        out[SCORE] = sd["classifier.weight"]
    elif not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
