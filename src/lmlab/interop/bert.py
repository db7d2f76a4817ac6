"""BERT and RoBERTa → lmlab encoder (post-LayerNorm, learned positions, GELU).

The head is read off the checkpoint: an MLM head (``cls.predictions`` / ``lm_head``) gives
:class:`~lmlab.models.EncoderMLM`; a classifier gives :class:`~lmlab.models.EncoderClassifier`
with ``pooling="cls-dense-tanh"`` (BERT's pooler, RoBERTa's classification head); neither gives a
bare :class:`~lmlab.models.EncoderModel` (hidden states; a bare model's pooler is not used). The
``bert.``/``roberta.`` prefix is optional (sentence-transformers store a bare ``BertModel``).

Token-type embeddings: lmlab encoders take no token types, so type 0's vector (what transformers
adds when no ``token_type_ids`` are given) is added to every position embedding. RoBERTa numbers
positions from ``padding_idx + 1``: the table's first ``padding_idx + 1`` rows are sliced off,
which gives the same positions for unpadded and right-padded inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import (
    RuleMap,
    activation,
    bias_or_zeros,
    config_mismatches,
    fill_tensors,
    qkv_slices,
    require_exportable,
    strip_prefix,
    to,
)
from lmlab.interop.weights import Target, TensorSource, load_into
from lmlab.models import ModelConfig, build_model

TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


def prefixes(model_type: str) -> tuple[str, ...]:
    return (f"{model_type}.",)


def head_of(names: list[str], model_type: str) -> str:
    """``lm``, ``classifier`` or ``none``, from the tensors the checkpoint holds."""
    if any(n.startswith(("cls.predictions.", "lm_head.")) for n in names):
        return "lm"
    if any(n.startswith("classifier.") for n in names):
        return "classifier"
    return "none"


def position_offset(hf: HFConfig) -> int:
    """Rows of the position table before position 0 (RoBERTa: padding_idx + 1)."""
    return hf.get("pad_token_id", 1) + 1 if hf.model_type == "roberta" else 0


def model_config(hf: HFConfig, source: TensorSource) -> ModelConfig:
    """The lmlab config of a BERT/RoBERTa ``config.json`` and checkpoint."""
    names = source.names()
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise LmlabError(f"{hf.path}: position_embedding_type {hf.get('position_embedding_type')!r} is not supported")
    head = head_of(names, hf.model_type)
    if head == "lm" and hf.get("hidden_act", "gelu") != "gelu":
        raise LmlabError(f"{hf.path}: an MLM head with hidden_act {hf.get('hidden_act')!r} is not supported (only gelu)")
    num_labels = 2
    if head == "classifier":
        weight = "classifier.out_proj.weight" if "classifier.out_proj.weight" in names else "classifier.weight"
        num_labels = source.info(weight).shape[0]
    return ModelConfig(
        backbone="encoder",
        head=head,
        vocab_size=hf.require("vocab_size"),
        n_layer=hf.require("num_hidden_layers"),
        n_head=hf.require("num_attention_heads"),
        d_model=hf.require("hidden_size"),
        d_ff=hf.require("intermediate_size"),
        context_length=hf.require("max_position_embeddings") - position_offset(hf),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        bias=True,
        position="learned",
        norm="layernorm",
        norm_placement="post",
        norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        ffn=activation(hf.get("hidden_act", "gelu"), str(hf.path)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        num_labels=num_labels,
        pooling="cls-dense-tanh",
    )


def name_map(config: ModelConfig, hf: HFConfig, names: list[str]) -> RuleMap:
    """BERT/RoBERTa tensor names → lmlab names."""
    d = config.d_model
    slices = qkv_slices(d, d)
    w = r"\.(weight|bias)"
    offset = position_offset(hf)

    def part(which: str):
        return lambda m: Target(f"backbone.blocks.{m.group(1)}.attn.qkv.{m.group(2)}", None, slices[which])

    p, b = r"encoder\.layer\.(\d+)\.", "backbone.blocks.{0}."
    rules = [
        (r"embeddings\.word_embeddings\.weight", to("backbone.tok_emb.weight")),
        (r"embeddings\.position_embeddings\.weight", to("backbone.pos_emb.weight", (lambda t: t[offset:]) if offset else None)),
        (r"embeddings\.LayerNorm" + w, to("backbone.emb_norm.{0}")),
        (p + r"attention\.self\.query" + w, part("q")),
        (p + r"attention\.self\.key" + w, part("k")),
        (p + r"attention\.self\.value" + w, part("v")),
        (p + r"attention\.output\.dense" + w, to(b + "attn.out_proj.{1}")),
        (p + r"attention\.output\.LayerNorm" + w, to(b + "attn_norm.{1}")),
        (p + r"intermediate\.dense" + w, to(b + "ffn.up.{1}")),
        (p + r"output\.dense" + w, to(b + "ffn.down.{1}")),
        (p + r"output\.LayerNorm" + w, to(b + "ffn_norm.{1}")),
    ]
    if config.head == "lm":
        bias_names = ("cls.predictions.bias", "lm_head.bias")
        has_bias = any(n in names for n in bias_names)
        rules += [
            (r"(?:cls\.predictions\.transform|lm_head)\.dense" + w, to("mlm_head.dense.{0}")),
            (r"(?:cls\.predictions\.transform\.LayerNorm|lm_head\.layer_norm)" + w, to("mlm_head.norm.{0}")),
            (r"(?:cls\.predictions|lm_head)\.bias", to("mlm_head.decoder.bias")),
        ]
        if not has_bias:
            rules.append((r"(?:cls\.predictions|lm_head)\.decoder\.bias", to("mlm_head.decoder.bias")))
        if not config.tie_embeddings:
            rules.append((r"(?:cls\.predictions|lm_head)\.decoder\.weight", to("mlm_head.decoder.weight")))
    elif config.head == "classifier":
        rules += [
            (r"(?:pooler\.dense|classifier\.dense)" + w, to("classifier.pooler.0.{0}")),
            (r"(?:classifier|classifier\.out_proj)" + w, to("classifier.classifier.{0}")),
        ]
    return RuleMap(rules, prefixes(hf.model_type))


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a BERT/RoBERTa checkpoint and stream its weights in."""
    names = source.names()
    config = model_config(hf, source)
    model = build_model(config)
    ignore = ["*embeddings.position_ids", "*embeddings.token_type_ids", "*" + TOKEN_TYPES,
              "cls.seq_relationship.*"]
    if config.head == "lm":
        ignore += ["*predictions.decoder.bias", "lm_head.decoder.bias"]
        if config.tie_embeddings:
            ignore += ["cls.predictions.decoder.weight", "lm_head.decoder.weight"]
    if config.head != "classifier":
        ignore += ["*pooler.dense.*"]
    load_into(fill_tensors(model), source, name_map(config, hf, names), ignore=ignore)
    types = [n for n in names if strip_prefix(n, prefixes(hf.model_type)) == TOKEN_TYPES]
    if types:
        with torch.no_grad():
            model.backbone.pos_emb.weight += source.get(types[0])[0].to(model.backbone.pos_emb.weight.dtype)
    return model, config


def pretrained_pooler(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The pretrained BERT pooler (``pooler.dense``) of a Hugging Face BERT directory as the state
    dict of a ``cls-dense-tanh`` classification head's ``pooler``; None when the checkpoint is not
    BERT's or has none. A bare or masked-LM BERT does not use its pooler, so :func:`load` leaves it
    out; a classifier fine-tuned from it starts from these weights, as
    ``BertForSequenceClassification.from_pretrained`` does."""
    from lmlab.errors import read_json_file
    from lmlab.interop.weights import WeightSource

    folder = Path(directory)
    config = folder / "config.json"
    if not config.is_file() or read_json_file(config, "pass a Hugging Face model directory", dict).get("model_type") != "bert":
        return None
    source = WeightSource.from_directory(folder)
    found = {strip_prefix(name, prefixes("bert")): name for name in source.names()}
    if "pooler.dense.weight" not in found:
        return None
    return {f"0.{kind}": source.get(found[f"pooler.dense.{kind}"]) for kind in ("weight", "bias")}


# ---------------------------------------------------------------- export

EXPORT_ACTIVATIONS = ("gelu", "gelu-tanh", "relu", "silu")
CLASSIFIER_POOLING = "cls-dense-tanh"  # BERT's pooler (RoBERTa's classification head)
ARCHITECTURES = {"lm": "BertForMaskedLM", "classifier": "BertForSequenceClassification", "none": "BertModel"}


def encoder_mismatches(config: ModelConfig, norm_placement: str) -> list[str]:
    """What keeps an lmlab encoder from a BERT-family one with ``norm_placement``: learned
    positions, LayerNorm, a plain activation (exact GELU under an MLM head), whole heads, and a
    head that is an MLM head, none, or a classifier pooling as BERT does."""
    wanted = {"arch": "transformer", "backbone": "encoder", "position": "learned", "norm": "layernorm",
              "norm_placement": norm_placement}
    bad = config_mismatches(config, wanted)
    if config.head == "classifier" and config.pooling != CLASSIFIER_POOLING:
        bad.append(f"pooling={config.pooling!r} (a classifier exports with {CLASSIFIER_POOLING!r})")
    if config.ffn not in EXPORT_ACTIVATIONS or (config.head == "lm" and config.ffn != "gelu"):
        bad.append(f"ffn={config.ffn!r}")  # BERT's MLM head uses hidden_act, lmlab's exact GELU
    if (config.n_kv_heads or config.n_head) != config.n_head or config.head_size not in (None, config.d_model // config.n_head):
        bad.append("grouped or resized heads")
    return bad


def check_exportable(config: ModelConfig) -> None:
    """Raise unless the encoder has a BERT equivalent (BertForMaskedLM, BertForSequenceClassification
    or BertModel; a bias-free encoder is written with zero biases)."""
    require_exportable(config, "BERT", encoder_mismatches(config, "post"))


def export_config(config: ModelConfig) -> dict:
    """``config.json`` of the BERT model equivalent to an lmlab encoder (one token type, all zero)."""
    from lmlab.interop.mapping import LMLAB_TO_HF_ACTIVATION

    return {
        "model_type": "bert",
        "architectures": [ARCHITECTURES[config.head]],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.ffn_width,
        "hidden_act": LMLAB_TO_HF_ACTIVATION[config.ffn],
        "max_position_embeddings": config.context_length,
        "type_vocab_size": 1,
        "layer_norm_eps": config.norm_eps,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "classifier_dropout": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "position_embedding_type": "absolute",
    }


def export_tensors(model: nn.Module, config: ModelConfig) -> dict:
    """The Hugging Face BERT state dict of an lmlab encoder (zero biases where it has none)."""
    sd = model.state_dict()
    prefix = "" if config.head == "none" else "bert."
    out = {prefix + name: tensor for name, tensor in embedding_tensors(sd, config).items()}
    out[prefix + "embeddings.LayerNorm.weight"] = sd["backbone.emb_norm.weight"]
    out[prefix + "embeddings.LayerNorm.bias"] = bias_or_zeros(sd, "backbone.emb_norm")
    for i in range(config.n_layer):
        out.update(layer_tensors(sd, config, f"backbone.blocks.{i}.", f"{prefix}encoder.layer.{i}.", LAYER_NAMES))
    return out | head_tensors(sd, config, prefix)


# lmlab block module → BERT layer module (RoBERTa's are the same)
LAYER_NAMES = (("attn.out_proj", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
               ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"), ("ffn_norm", "output.LayerNorm"))


def embedding_tensors(sd: dict, config: ModelConfig, position_offset: int = 0) -> dict:
    """Word, position (after ``position_offset`` zero rows) and one all-zero token-type table."""
    positions = sd["backbone.pos_emb.weight"]
    return {
        "embeddings.word_embeddings.weight": sd["backbone.tok_emb.weight"],
        "embeddings.position_embeddings.weight": torch.cat([positions.new_zeros(position_offset, config.d_model), positions]),
        "embeddings.token_type_embeddings.weight": positions.new_zeros(1, config.d_model),
    }


def layer_tensors(sd: dict, config: ModelConfig, src: str, dst: str, names) -> dict:
    """One BERT-family layer ``dst`` of lmlab block ``src``: q/k/v split from the fused projection,
    the other modules by ``names`` (lmlab → theirs); zero biases where the block has none."""
    slices = qkv_slices(config.d_model, config.d_model)
    qkv_weight, qkv_bias = sd[f"{src}attn.qkv.weight"], bias_or_zeros(sd, f"{src}attn.qkv")
    out = {}
    for part, name in (("q", "query"), ("k", "key"), ("v", "value")):
        out[f"{dst}attention.self.{name}.weight"] = qkv_weight[slices[part]]
        out[f"{dst}attention.self.{name}.bias"] = qkv_bias[slices[part]]
    for ours, theirs in names:
        out[f"{dst}{theirs}.weight"] = sd[f"{src}{ours}.weight"]
        out[f"{dst}{theirs}.bias"] = bias_or_zeros(sd, src + ours)
    return out


def head_tensors(sd: dict, config: ModelConfig, prefix: str) -> dict:
    """BERT's MLM head (``cls.predictions``) or its pooler + classifier."""
    out = {}
    if config.head == "lm":
        for kind in ("weight", "bias"):
            out[f"cls.predictions.transform.dense.{kind}"] = sd[f"mlm_head.dense.{kind}"]
            out[f"cls.predictions.transform.LayerNorm.{kind}"] = sd[f"mlm_head.norm.{kind}"]
        out["cls.predictions.bias"] = sd["mlm_head.decoder.bias"]
        if not config.tie_embeddings:
            out["cls.predictions.decoder.weight"] = sd["mlm_head.decoder.weight"]
    elif config.head == "classifier":
        for kind in ("weight", "bias"):
            out[f"{prefix}pooler.dense.{kind}"] = sd[f"classifier.pooler.0.{kind}"]
            out[f"classifier.{kind}"] = sd[f"classifier.classifier.{kind}"]
    return out
