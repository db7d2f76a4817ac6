"""BART → lmlab encoder-decoder: learned positions (stored with an offset of 2, sliced off),
post-LayerNorm blocks, ``layernorm_embedding`` (lmlab's post-norm embedding norm), GELU, tied head
with ``final_logits_bias`` (the head's bias). ``scale_embedding`` is folded into the embedding (the
head then keeps an untied, unscaled copy).

Export inverts this: an lmlab post-LayerNorm encoder-decoder with learned positions and shared
embeddings → ``BartForConditionalGeneration`` (no ``scale_embedding``, 2 zero position rows in
front, the head's bias or zeros as ``final_logits_bias``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import (
    LMLAB_TO_HF_ACTIVATION,
    RuleMap,
    activation,
    bias_or_zeros,
    config_mismatches,
    fill_tensors,
    qkv_slices,
    require_equal,
    require_exportable,
    to,
)
from lmlab.interop.weights import Target, TensorSource, load_into
from lmlab.models import ModelConfig, build_model

PREFIXES = ("model.",)
POSITION_OFFSET = 2


def model_config(hf: HFConfig, has_logits_bias: bool) -> ModelConfig:
    """The lmlab config of a BART ``config.json``."""
    where = str(hf.path)
    n_layer = require_equal({k: hf.require(k) for k in ("encoder_layers", "decoder_layers")}, where, "equal encoder and decoder depths")
    n_head = require_equal({k: hf.require(k) for k in ("encoder_attention_heads", "decoder_attention_heads")}, where, "equal head counts")
    d_ff = require_equal({k: hf.require(k) for k in ("encoder_ffn_dim", "decoder_ffn_dim")}, where, "equal feed-forward widths")
    scaled = bool(hf.get("scale_embedding", False))
    return ModelConfig(
        backbone="encoder-decoder",
        vocab_size=hf.require("vocab_size"),
        n_layer=n_layer,
        n_head=n_head,
        d_model=hf.require("d_model"),
        d_ff=d_ff,
        context_length=hf.require("max_position_embeddings"),
        dropout=float(hf.get("dropout", 0.1)),
        bias=True,
        position="learned",
        norm="layernorm",
        norm_placement="post",
        norm_eps=1e-5,
        ffn=activation(hf.get("activation_function", "gelu"), where),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)) and not scaled,
        share_embeddings=True,
        head_bias=has_logits_bias,
    )


def name_map(config: ModelConfig, hf_tied: bool, scaled: bool) -> RuleMap:
    """BART tensor names → lmlab names."""
    d = config.d_model
    w = r"\.(weight|bias)"
    scale = math.sqrt(d)
    shared = [Target("encoder.tok_emb.weight", (lambda t: t * scale) if scaled else None)]
    if hf_tied and scaled:
        shared.append(Target("lm_head.weight"))
    rules = [
        (r"shared\.weight", lambda m: shared),
        (r"(encoder|decoder)\.embed_positions\.weight", to("{0}.pos_emb.weight", lambda t: t[POSITION_OFFSET:])),
        (r"(encoder|decoder)\.layernorm_embedding" + w, to("{0}.emb_norm.{1}")),
        (r"final_logits_bias", to("lm_head.bias", lambda t: t.reshape(-1))),
    ] + layer_rules(d)
    if not hf_tied:
        rules.append((r"lm_head\.weight", to("lm_head.weight")))
    return RuleMap(rules, PREFIXES)


def layer_rules(d: int) -> list:
    """The rules of BART-named encoder and decoder layers (PEGASUS and Blenderbot name theirs the
    same): self-attention into the fused ``qkv``, cross-attention keys and values into ``kv_proj``."""
    slices = qkv_slices(d, d)
    w = r"\.(weight|bias)"

    def part(stack: str, which: str):
        return lambda m: Target(f"{stack}.blocks.{m.group(1)}.attn.qkv.{m.group(2)}", None, slices[which])

    def kv(which: slice):
        return lambda m: Target(f"decoder.blocks.{m.group(1)}.cross_attn.kv_proj.{m.group(2)}", None, which)

    rules = []
    for stack in ("encoder", "decoder"):
        p, b = rf"{stack}\.layers\.(\d+)\.", stack + ".blocks.{0}."
        rules += [
            (p + r"self_attn\.q_proj" + w, part(stack, "q")),
            (p + r"self_attn\.k_proj" + w, part(stack, "k")),
            (p + r"self_attn\.v_proj" + w, part(stack, "v")),
            (p + r"self_attn\.out_proj" + w, to(b + "attn.out_proj.{1}")),
            (p + r"self_attn_layer_norm" + w, to(b + "attn_norm.{1}")),
            (p + r"fc1" + w, to(b + "ffn.up.{1}")),
            (p + r"fc2" + w, to(b + "ffn.down.{1}")),
            (p + r"final_layer_norm" + w, to(b + "ffn_norm.{1}")),
        ]
    p, b = r"decoder\.layers\.(\d+)\.", "decoder.blocks.{0}."
    rules += [
        (p + r"encoder_attn\.q_proj" + w, to(b + "cross_attn.q_proj.{1}")),
        (p + r"encoder_attn\.k_proj" + w, kv(slice(0, d))),
        (p + r"encoder_attn\.v_proj" + w, kv(slice(d, 2 * d))),
        (p + r"encoder_attn\.out_proj" + w, to(b + "cross_attn.out_proj.{1}")),
        (p + r"encoder_attn_layer_norm" + w, to(b + "cross_norm.{1}")),
    ]
    return rules


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a BART checkpoint and stream its weights in."""
    names = source.names()
    config = model_config(hf, "final_logits_bias" in names)
    hf_tied = bool(hf.get("tie_word_embeddings", True))
    model = build_model(config)
    ignore = ["*encoder.embed_tokens.weight", "*decoder.embed_tokens.weight"] + (["lm_head.weight"] if hf_tied else [])
    load_into(fill_tensors(model), source, name_map(config, hf_tied, bool(hf.get("scale_embedding", False))), ignore=ignore)
    return model, config


# ---------------------------------------------------------------- export

BART_NORM_EPS = 1e-5  # BART's LayerNorms use torch's default epsilon; the config cannot change it


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder-decoder has a BART equivalent (BartForConditionalGeneration)."""
    require_exportable(config, "BART", layout_mismatches(config, "post", "BART"))


def layout_mismatches(config: ModelConfig, norm_placement: str, family: str) -> list[str]:
    """What keeps an encoder-decoder from the BART layout with its norms ``norm_placement``
    (BART: post, Blenderbot: pre); empty when it has that layout."""
    wanted = {
        "arch": "transformer", "backbone": "encoder-decoder", "position": "learned", "norm": "layernorm",
        "norm_placement": norm_placement, "share_embeddings": True,
    }
    bad = config_mismatches(config, wanted)
    if config.ffn not in LMLAB_TO_HF_ACTIVATION:
        bad.append(f"ffn={config.ffn!r}")
    if (config.n_kv_heads or config.n_head) != config.n_head or config.head_size not in (None, config.d_model // config.n_head):
        bad.append("grouped or resized heads")
    if config.norm_eps != BART_NORM_EPS:
        bad.append(f"norm_eps={config.norm_eps!r} ({family} uses {BART_NORM_EPS})")
    return bad


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the BART model equivalent to an lmlab encoder-decoder (no embedding scaling:
    lmlab's embedding is what BART's ``shared`` holds)."""
    return {
        "model_type": "bart",
        "architectures": ["BartForConditionalGeneration"],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.n_layer,
        "decoder_layers": config.n_layer,
        "encoder_attention_heads": config.n_head,
        "decoder_attention_heads": config.n_head,
        "encoder_ffn_dim": config.ffn_width,
        "decoder_ffn_dim": config.ffn_width,
        "activation_function": LMLAB_TO_HF_ACTIVATION[config.ffn],
        "max_position_embeddings": config.context_length,
        "dropout": config.dropout,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "scale_embedding": False,
        "tie_word_embeddings": config.tie_embeddings,
        "is_encoder_decoder": True,
    }


def layer_tensors(sd: dict, src: str, dst: str, cross: bool, d: int) -> dict:
    """One BART-named layer (``dst``) of lmlab block ``src``: attention, cross-attention (``cross``)
    and feed-forward with their norms, zero biases where the block has none. Blenderbot's layers
    have the same names."""
    out = {}
    layers = [("attn.out_proj", "self_attn.out_proj"), ("attn_norm", "self_attn_layer_norm"),
              ("ffn.up", "fc1"), ("ffn.down", "fc2"), ("ffn_norm", "final_layer_norm")]
    if cross:
        layers += [("cross_attn.q_proj", "encoder_attn.q_proj"), ("cross_attn.out_proj", "encoder_attn.out_proj"),
                   ("cross_norm", "encoder_attn_layer_norm")]
    for ours, theirs in layers:
        out[f"{dst}{theirs}.weight"] = sd[f"{src}{ours}.weight"]
        out[f"{dst}{theirs}.bias"] = bias_or_zeros(sd, src + ours)
    fused = [("attn.qkv", "self_attn", "qkv")] + ([("cross_attn.kv_proj", "encoder_attn", "kv")] if cross else [])
    for ours, theirs, parts in fused:
        weight, bias = sd[f"{src}{ours}.weight"], bias_or_zeros(sd, src + ours)
        for i, part in enumerate(parts):
            out[f"{dst}{theirs}.{part}_proj.weight"] = weight[i * d:(i + 1) * d]
            out[f"{dst}{theirs}.{part}_proj.bias"] = bias[i * d:(i + 1) * d]
    return out


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The Hugging Face BART state dict of an lmlab encoder-decoder: positions get BART's 2 unused
    leading rows (zeros), the head's bias (or zeros) becomes ``final_logits_bias``, and a bias-free
    model gets zero biases."""
    sd = model.state_dict()
    d = config.d_model
    out = {"model.shared.weight": sd["encoder.tok_emb.weight"]}
    for stack in ("encoder", "decoder"):
        # transformers ties these to ``shared`` only when the head is tied too: write them always
        out[f"model.{stack}.embed_tokens.weight"] = sd["encoder.tok_emb.weight"]
        pos = sd[f"{stack}.pos_emb.weight"]
        out[f"model.{stack}.embed_positions.weight"] = torch.cat([pos.new_zeros(POSITION_OFFSET, d), pos])
        out[f"model.{stack}.layernorm_embedding.weight"] = sd[f"{stack}.emb_norm.weight"]
        out[f"model.{stack}.layernorm_embedding.bias"] = bias_or_zeros(sd, f"{stack}.emb_norm")
        for i in range(config.n_layer):
            out.update(layer_tensors(sd, f"{stack}.blocks.{i}.", f"model.{stack}.layers.{i}.", stack == "decoder", d))
    out["final_logits_bias"] = bias_or_zeros(sd, "lm_head").reshape(1, -1)
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
