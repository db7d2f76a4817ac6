"""T5 (v1.0: ReLU, tied head; v1.1: gated-GELU "gelu_new", untied head) → lmlab encoder-decoder.

T5 differs from lmlab's attention in two ways, both folded into the weights at load time:
- no 1/√d scaling of attention scores: the query weights are multiplied by √d_kv;
- with tied embeddings the decoder output is scaled by d_model^-0.5 before the head: the head is
  loaded untied, as the embedding × d_model^-0.5.
T5's layer norm (no mean, no bias) is RMSNorm; the relative bias lives in the first layer and is
shared — lmlab's stack-level T5 bias.

Export inverts this: an lmlab pre-RMSNorm, bias-free encoder-decoder with T5 relative positions and
shared embeddings → ``T5ForConditionalGeneration`` with the query weights divided by √d_kv and the
head written as ``lm_head.weight`` with ``tie_word_embeddings: false`` (no output scaling).
"""

from __future__ import annotations

import math

from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import (
    RuleMap,
    config_mismatches,
    fill_tensors,
    qkv_slices,
    require_equal,
    require_exportable,
    to,
)
from lmlab.interop.weights import Target, TensorSource, load_into
from lmlab.models import ModelConfig, build_model

DEFAULT_CONTEXT = 512
FFN = {"relu": "relu", "gelu": "gelu", "gated-gelu": "geglu-tanh", "gated-relu": "reglu", "gated-silu": "swiglu"}
GATED = ("geglu-tanh", "reglu", "swiglu")


def model_config(hf: HFConfig) -> ModelConfig:
    """The lmlab config of a T5 ``config.json``."""
    n_layer = require_equal(
        {"num_layers": hf.require("num_layers"), "num_decoder_layers": hf.get("num_decoder_layers") or hf.require("num_layers")},
        str(hf.path), "as many decoder as encoder layers",
    )
    d_model, d_kv, n_head = hf.require("d_model"), hf.require("d_kv"), hf.require("num_heads")
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in FFN:
        raise LmlabError(f"{hf.path}: feed_forward_proj {proj!r} is not supported; lmlab knows {', '.join(FFN)}")
    return ModelConfig(
        backbone="encoder-decoder",
        vocab_size=hf.require("vocab_size"),
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        head_size=None if d_kv * n_head == d_model else d_kv,
        d_ff=hf.require("d_ff"),
        context_length=hf.get("n_positions") or DEFAULT_CONTEXT,
        dropout=float(hf.get("dropout_rate", 0.1)),
        bias=False,
        position="t5",
        t5_num_buckets=hf.get("relative_attention_num_buckets", 32),
        t5_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        ffn=FFN[proj],
        tie_embeddings=False,  # the tied head's rescaling is folded into an untied copy
        share_embeddings=True,
    )


def name_map(config: ModelConfig, head_from_shared: bool, scale_head: bool) -> RuleMap:
    """T5 tensor names → lmlab names. The head is ``lm_head.weight`` or (``head_from_shared``) the
    shared embedding; ``scale_head`` folds the decoder-output scaling d_model^-0.5 into it."""
    inner = config.n_head * config.head_dim
    slices = qkv_slices(inner, inner)
    q_scale = math.sqrt(config.head_dim)

    def qkv(stack: str, which: str):
        transform = (lambda t: t * q_scale) if which == "q" else None
        return lambda m: Target(f"{stack}.blocks.{m.group(1)}.attn.qkv.weight", transform, slices[which])

    def ffn(stack: str, sub: str):
        names = {"wi": "up", "wi_0": "gate", "wi_1": "up", "wo": "down"}
        return lambda m: Target(f"{stack}.blocks.{m.group(1)}.ffn.{names[m.group(2)]}.weight")

    head_scale = (lambda t: t * config.d_model ** -0.5) if scale_head else None
    shared = [Target("encoder.tok_emb.weight")]
    if head_from_shared:
        shared.append(Target("lm_head.weight", head_scale))
    rules = [
        (r"shared\.weight", lambda m: shared),
        (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
         to("{0}.pos_emb.relative_bias.weight")),
        (r"(encoder|decoder)\.final_layer_norm\.weight", to("{0}.final_norm.weight")),
    ]
    for stack, ffn_layer in (("encoder", 1), ("decoder", 2)):
        p = rf"{stack}\.block\.(\d+)\.layer\."
        b = stack + ".blocks.{0}."
        rules += [
            (p + r"0\.SelfAttention\.q\.weight", qkv(stack, "q")),
            (p + r"0\.SelfAttention\.k\.weight", qkv(stack, "k")),
            (p + r"0\.SelfAttention\.v\.weight", qkv(stack, "v")),
            (p + r"0\.SelfAttention\.o\.weight", to(b + "attn.out_proj.weight")),
            (p + r"0\.layer_norm\.weight", to(b + "attn_norm.weight")),
            (p + rf"{ffn_layer}\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight", ffn(stack, "")),
            (p + rf"{ffn_layer}\.layer_norm\.weight", to(b + "ffn_norm.weight")),
        ]
    p, b = r"decoder\.block\.(\d+)\.layer\.1\.", "decoder.blocks.{0}."
    rules += [
        (p + r"EncDecAttention\.q\.weight", to(b + "cross_attn.q_proj.weight", lambda t: t * q_scale)),
        (p + r"EncDecAttention\.k\.weight", lambda m: Target(b.format(m.group(1)) + "cross_attn.kv_proj.weight", None, slice(0, inner))),
        (p + r"EncDecAttention\.v\.weight", lambda m: Target(b.format(m.group(1)) + "cross_attn.kv_proj.weight", None, slice(inner, 2 * inner))),
        (p + r"EncDecAttention\.o\.weight", to(b + "cross_attn.out_proj.weight")),
        (p + r"layer_norm\.weight", to(b + "cross_norm.weight")),
    ]
    if not head_from_shared:
        rules.append((r"lm_head\.weight", to("lm_head.weight", head_scale)))
    return RuleMap(rules)


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a T5 checkpoint and stream its weights in.

    Decoder outputs are scaled by d_model^-0.5 when ``scale_decoder_outputs`` (transformers 5) or,
    in older configs, ``tie_word_embeddings`` says so."""
    config = model_config(hf)
    head_from_shared = "lm_head.weight" not in source.names()
    scale_head = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    model = build_model(config)
    ignore = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    load_into(fill_tensors(model), source, name_map(config, head_from_shared, scale_head), ignore=ignore)
    return model, config


# ---------------------------------------------------------------- export

LMLAB_TO_T5_FFN = {ours: theirs for theirs, ours in FFN.items()}


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder-decoder has a T5 equivalent (T5ForConditionalGeneration)."""
    wanted = {
        "arch": "transformer", "backbone": "encoder-decoder", "position": "t5",
        "norm_placement": "pre", "bias": False, "share_embeddings": True, "head_bias": False,
    }
    bad = config_mismatches(config, wanted)
    if config.norm not in ("rmsnorm", "layernorm"):  # a bias-free LayerNorm is written as RMSNorm
        bad.append(f"norm={config.norm!r}")
    if config.ffn not in LMLAB_TO_T5_FFN:
        bad.append(f"ffn={config.ffn!r}")
    if (config.n_kv_heads or config.n_head) != config.n_head:
        bad.append(f"n_kv_heads={config.n_kv_heads}")
    require_exportable(config, "T5", bad)


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the T5 model equivalent to an lmlab encoder-decoder (untied head, so T5
    does not scale the decoder output)."""
    return {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.head_dim,
        "d_ff": config.ffn_width,
        "num_layers": config.n_layer,
        "num_decoder_layers": config.n_layer,
        "num_heads": config.n_head,
        "relative_attention_num_buckets": config.t5_num_buckets,
        "relative_attention_max_distance": config.t5_max_distance,
        "n_positions": config.context_length,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": LMLAB_TO_T5_FFN[config.ffn],
        "tie_word_embeddings": False,
        "scale_decoder_outputs": False,
        "is_encoder_decoder": True,
    }


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The Hugging Face T5 state dict of an lmlab encoder-decoder (a LayerNorm one made mean-free:
    :func:`mean_free_residual_writers`)."""
    sd = mean_free_residual_writers(model.state_dict(), config) if config.norm == "layernorm" else model.state_dict()
    inner = config.n_head * config.head_dim
    slices = qkv_slices(inner, inner)
    q_scale = 1.0 / math.sqrt(config.head_dim)  # T5 does not scale attention scores
    ffn_names = {"up": "wi_1", "gate": "wi_0", "down": "wo"} if config.ffn in GATED else {"up": "wi", "down": "wo"}
    out = {"shared.weight": sd["encoder.tok_emb.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for stack, ffn_layer in (("encoder", 1), ("decoder", 2)):
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = sd[f"{stack}.pos_emb.relative_bias.weight"]
        out[f"{stack}.final_layer_norm.weight"] = sd[f"{stack}.final_norm.weight"]
        for i in range(config.n_layer):
            src, dst = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
            qkv = sd[f"{src}attn.qkv.weight"]
            out[f"{dst}0.SelfAttention.q.weight"] = qkv[slices["q"]] * q_scale
            out[f"{dst}0.SelfAttention.k.weight"] = qkv[slices["k"]]
            out[f"{dst}0.SelfAttention.v.weight"] = qkv[slices["v"]]
            out[f"{dst}0.SelfAttention.o.weight"] = sd[f"{src}attn.out_proj.weight"]
            out[f"{dst}0.layer_norm.weight"] = sd[f"{src}attn_norm.weight"]
            for ours, theirs in ffn_names.items():
                out[f"{dst}{ffn_layer}.DenseReluDense.{theirs}.weight"] = sd[f"{src}ffn.{ours}.weight"]
            out[f"{dst}{ffn_layer}.layer_norm.weight"] = sd[f"{src}ffn_norm.weight"]
            if stack == "decoder":
                kv = sd[f"{src}cross_attn.kv_proj.weight"]
                out[f"{dst}1.EncDecAttention.q.weight"] = sd[f"{src}cross_attn.q_proj.weight"] * q_scale
                out[f"{dst}1.EncDecAttention.k.weight"] = kv[:inner]
                out[f"{dst}1.EncDecAttention.v.weight"] = kv[inner:]
                out[f"{dst}1.EncDecAttention.o.weight"] = sd[f"{src}cross_attn.out_proj.weight"]
                out[f"{dst}1.layer_norm.weight"] = sd[f"{src}cross_norm.weight"]
    return out


def mean_free_residual_writers(sd: dict, config: ModelConfig) -> dict:
    """The state dict with the token embedding and every projection into the residual stream
    (attention and cross-attention ``out_proj``, feed-forward ``down``) minus their mean over the
    model dimension. A pre-norm stack reads its residual stream only through its norms, which
    ignore the stream's mean, so this changes no output — and keeps the stream mean-free, where a
    bias-free LayerNorm equals RMSNorm. The (untied) head keeps the original embedding."""
    def centred(tensor, dim):
        return tensor - tensor.mean(dim=dim, keepdim=True)

    writers = {name for name in sd if name.endswith(("attn.out_proj.weight", "ffn.down.weight"))}
    out = {name: centred(t, 0) if name in writers else t for name, t in sd.items()}
    for stack in ("encoder", "decoder"):
        out[f"{stack}.tok_emb.weight"] = centred(sd[f"{stack}.tok_emb.weight"], 1)
    return out
