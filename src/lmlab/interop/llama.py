"""Llama (and Mistral without a sliding window): RoPE with ``rope_theta``, RMSNorm, SwiGLU,
grouped-query attention, tied or untied LM head. q/k/v fill slices of lmlab's fused ``qkv``.
A ``LlamaForSequenceClassification`` checkpoint (a ``score`` layer) ↔
:class:`~lmlab.models.DecoderClassifier`."""

from __future__ import annotations

from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.gpt2 import SCORE, classifier_fields
from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import RuleMap, config_mismatches, fill_tensors, qkv_slices, require_exportable, to
from lmlab.interop.weights import Target, TensorSource, load_into
from lmlab.models import ModelConfig, build_model

PREFIXES = ("model.",)
DEFAULT_CONTEXT = 2048


def rope_theta(hf: HFConfig) -> float:
    """``rope_theta`` (top level, or in ``rope_parameters`` as transformers 5 writes it); only
    plain RoPE is supported (no ``rope_scaling``)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in ("default", None):
        raise LmlabError(f"{hf.path}: RoPE scaling {kind!r} is not supported by lmlab (only plain RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config(hf: HFConfig, head: dict | None = None) -> ModelConfig:
    """The lmlab config of a Llama ``config.json`` (``head``: a classifier's fields, see
    :func:`~lmlab.interop.gpt2.classifier_fields`)."""
    d_model, n_head = hf.require("hidden_size"), hf.require("num_attention_heads")
    head_dim = hf.get("head_dim") or d_model // n_head
    if hf.get("hidden_act", "silu") != "silu":
        raise LmlabError(f"{hf.path}: Llama hidden_act {hf.get('hidden_act')!r} is not supported (only silu)")
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise LmlabError(f"{hf.path}: attention_bias ≠ mlp_bias is not supported by lmlab")
    context = hf.get("max_position_embeddings") or DEFAULT_CONTEXT
    window = hf.get("sliding_window")
    if window is not None and window < context:
        raise LmlabError(f"{hf.path}: sliding-window attention ({window}) is not supported by lmlab")
    return ModelConfig(
        backbone="decoder",
        vocab_size=hf.require("vocab_size"),
        n_layer=hf.require("num_hidden_layers"),
        n_head=n_head,
        n_kv_heads=hf.get("num_key_value_heads") or n_head,
        d_model=d_model,
        head_size=None if head_dim * n_head == d_model else head_dim,
        d_ff=hf.require("intermediate_size"),
        context_length=context,
        dropout=float(hf.get("attention_dropout", 0.0)),
        bias=attention_bias,
        position="rope",
        rope_base=rope_theta(hf),
        norm="rmsnorm",
        norm_placement="pre",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        ffn="swiglu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **(head or {}),
    )


def layer_rules(config: ModelConfig, layer: str, emb: str, norm: str, q: str, k: str, v: str, o: str,
                gate: str, up: str, down: str, attn_norm: str, ffn_norm: str, head: str,
                q_transform=None, k_transform=None) -> list:
    """Rules for a Llama-shaped checkpoint whose names are given as regexes (``layer`` captures
    the block index); shared by the Hugging Face and GGUF layouts."""
    slices = qkv_slices(config.n_head * config.head_dim, (config.n_kv_heads or config.n_head) * config.head_dim)
    b = "backbone.blocks.{0}."

    def part(which: str, transform=None):
        return lambda m: Target(b.format(*m.groups()) + "attn.qkv." + m.group(2), transform, slices[which])

    rules = [
        (emb, to("backbone.tok_emb.weight")),
        (norm, to("backbone.final_norm.weight")),
        (layer + q, part("q", q_transform)),
        (layer + k, part("k", k_transform)),
        (layer + v, part("v")),
        (layer + o, to(b + "attn.out_proj.{1}")),
        (layer + gate, to(b + "ffn.gate.{1}")),
        (layer + up, to(b + "ffn.up.{1}")),
        (layer + down, to(b + "ffn.down.{1}")),
        (layer + attn_norm, to(b + "attn_norm.weight")),
        (layer + ffn_norm, to(b + "ffn_norm.weight")),
    ]
    if config.head == "lm" and not config.tie_embeddings:
        rules.append((head, to("lm_head.weight")))
    return rules


def name_map(config: ModelConfig) -> RuleMap:
    """Hugging Face Llama tensor names → lmlab names."""
    w = r"\.(weight|bias)"
    rules = layer_rules(
        config, r"layers\.(\d+)\.", r"embed_tokens\.weight", r"norm\.weight",
        r"self_attn\.q_proj" + w, r"self_attn\.k_proj" + w, r"self_attn\.v_proj" + w, r"self_attn\.o_proj" + w,
        r"mlp\.gate_proj" + w, r"mlp\.up_proj" + w, r"mlp\.down_proj" + w,
        r"input_layernorm\.weight", r"post_attention_layernorm\.weight", r"lm_head\.weight",
    )
    if config.head == "classifier":
        rules.append((r"score\.weight", to("classifier.weight")))
    return RuleMap(rules, PREFIXES)


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a Llama checkpoint and stream its weights in."""
    config = model_config(hf, classifier_fields(source))
    model = build_model(config)
    ignore = ("*rotary_emb.inv_freq",) + (("lm_head.weight",) if config.tie_embeddings else ())
    load_into(fill_tensors(model), source, name_map(config), ignore=ignore)
    return model, config


# ---------------------------------------------------------------- export


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the decoder has a Llama equivalent (an LM head or a last-token classifier)."""
    wanted = {
        "arch": "transformer", "backbone": "decoder", "position": "rope", "norm": "rmsnorm",
        "norm_placement": "pre", "ffn": "swiglu", "rope_fraction": 1.0,
    }
    bad = config_mismatches(config, wanted)
    if config.head not in ("lm", "classifier"):
        bad.append(f"head={config.head!r}")
    require_exportable(config, "Llama", bad)


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the Llama model equivalent to an lmlab decoder."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForSequenceClassification" if config.head == "classifier" else "LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_width,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_heads or config.n_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "hidden_act": "silu",
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": 0.0,
    }


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The Hugging Face Llama state dict of an lmlab decoder."""
    sd = model.state_dict()
    slices = qkv_slices(config.n_head * config.head_dim, (config.n_kv_heads or config.n_head) * config.head_dim)
    out = {"model.embed_tokens.weight": sd["backbone.tok_emb.weight"], "model.norm.weight": sd["backbone.final_norm.weight"]}
    kinds = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layer):
        src, dst = f"backbone.blocks.{i}.", f"model.layers.{i}."
        for kind in kinds:
            for part in "qkv":
                out[f"{dst}self_attn.{part}_proj.{kind}"] = sd[f"{src}attn.qkv.{kind}"][slices[part]]
            out[f"{dst}self_attn.o_proj.{kind}"] = sd[f"{src}attn.out_proj.{kind}"]
            for name in ("gate", "up", "down"):
                out[f"{dst}mlp.{name}_proj.{kind}"] = sd[f"{src}ffn.{name}.{kind}"]
        out[f"{dst}input_layernorm.weight"] = sd[f"{src}attn_norm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}ffn_norm.weight"]
    if config.head == "classifier":
        out[SCORE] = sd["classifier.weight"]
    elif not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
