"""PEGASUS → lmlab encoder-decoder: BART's layer names in a pre-LayerNorm layout (a LayerNorm
before each sublayer, one on each stack's output, none on the embeddings), fixed sinusoidal
positions with sin on the first half of the dimensions and cos on the second
(``sinusoidal-halves``, not stored in the checkpoint), and a tied head with ``final_logits_bias``.
lmlab's sinusoidal encoding scales the embedding by √d_model, as PEGASUS does with
``scale_embedding``; a checkpoint without it gets the inverse scale folded into the embedding
(the head then keeps an untied, unscaled copy)."""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from lmlab.interop import bart
from lmlab.interop.hf_config import HFConfig
from lmlab.interop.mapping import RuleMap, fill_tensors, to
from lmlab.interop.weights import Target, TensorSource, load_into
from lmlab.models import ModelConfig, build_model


def model_config(hf: HFConfig, has_logits_bias: bool) -> ModelConfig:
    """The lmlab config of a PEGASUS ``config.json``: BART's shapes, pre-norm, halved sinusoids."""
    scaled = bool(hf.get("scale_embedding", False))
    return dataclasses.replace(
        bart.model_config(hf, has_logits_bias), position="sinusoidal-halves", norm_placement="pre",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)) and scaled,
    )


def name_map(config: ModelConfig, hf_tied: bool, scaled: bool) -> RuleMap:
    """PEGASUS tensor names → lmlab names."""
    w = r"\.(weight|bias)"
    unscale = 1.0 / math.sqrt(config.d_model)
    shared = [Target("encoder.tok_emb.weight", None if scaled else (lambda t: t * unscale))]
    if hf_tied and not scaled:
        shared.append(Target("lm_head.weight"))
    rules = [
        (r"shared\.weight", lambda m: shared),
        (r"(encoder|decoder)\.layer_norm" + w, to("{0}.final_norm.{1}")),
        (r"final_logits_bias", to("lm_head.bias", lambda t: t.reshape(-1))),
    ] + bart.layer_rules(config.d_model)
    if not hf_tied:
        rules.append((r"lm_head\.weight", to("lm_head.weight")))
    return RuleMap(rules, bart.PREFIXES)


def load(hf: HFConfig, source: TensorSource) -> tuple[nn.Module, ModelConfig]:
    """Build the lmlab model of a PEGASUS checkpoint and stream its weights in."""
    config = model_config(hf, "final_logits_bias" in source.names())
    hf_tied = bool(hf.get("tie_word_embeddings", True))
    model = build_model(config)
    ignore = ["*encoder.embed_tokens.weight", "*decoder.embed_tokens.weight", "*embed_positions.weight"]
    ignore += ["lm_head.weight"] if hf_tied else []
    load_into(fill_tensors(model), source, name_map(config, hf_tied, bool(hf.get("scale_embedding", False))), ignore=ignore)
    return model, config
