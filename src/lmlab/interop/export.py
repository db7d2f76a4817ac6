"""Write an lmlab model as a Hugging Face model directory that ``transformers`` loads with the same
logits: ``config.json``, ``model.safetensors`` and the tokenizer files.

Formats: a decoder with learned positions, pre-LayerNorm and a plain activation (lmlab's default)
→ GPT-2; a decoder with RoPE, RMSNorm and SwiGLU → Llama; a post-LayerNorm encoder with learned
positions (MLM head or none) → BERT (one all-zero token type); a post-LayerNorm encoder-decoder with
learned positions → BART; a pre-RMSNorm, bias-free encoder-decoder with T5 relative positions → T5.
The output directory must be new, empty or one lmlab exported to before (see
:mod:`lmlab.output_dir`), so an existing model directory is never overwritten.
Tokenizers: a ``tokenizers``-backed one
is saved as its ``tokenizer.json``; a character tokenizer becomes a WordLevel ``tokenizer.json``
over its alphabet, split into single characters and decoded by concatenation (special tokens are
added tokens; without ``unk`` an unknown character is an error in transformers too). Other
tokenizers are not written (a note says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop import bart, bert, gpt2, llama, t5
from lmlab.models import ModelConfig
from lmlab.output_dir import claim_output_dir
from lmlab.tokenizers import CharTokenizer, Tokenizer

FORMATS = {"gpt2": gpt2, "llama": llama, "bert": bert, "bart": bart, "t5": t5}
BACKBONES = {"gpt2": "decoder", "llama": "decoder", "bert": "encoder", "bart": "encoder-decoder", "t5": "encoder-decoder"}
# The tokenizer role an encoder-decoder's decoder starts from: BART (and lmlab's denoising) start
# from EOS, T5 (and lmlab's span corruption) from PAD.
DECODER_START_ROLE = {"bart": "eos", "t5": "pad"}
HF_KIND = "hf-model"  # the kind of output (see lmlab.output_dir) an exported directory is


def export_format(config: ModelConfig) -> str:
    """The Hugging Face model type an lmlab config is written as; an error if there is none."""
    errors = []
    candidates = [name for name, backbone in BACKBONES.items() if backbone == config.backbone] or list(FORMATS)
    for name in candidates:
        family = FORMATS[name]
        try:
            family.check_exportable(config)
            return name
        except LmlabError as exc:
            errors.append(str(exc))
    raise LmlabError(
        "cannot export this model to Hugging Face: " + "; ".join(errors)
        + " (export supports GPT-2-shaped and Llama-shaped decoders, BERT-shaped encoders and"
        " BART-shaped or T5-shaped encoder-decoders)"
    )


def export_hf(model: nn.Module, model_config: ModelConfig, tokenizer: Tokenizer | None, out_dir: str | Path) -> dict[str, Any]:
    """Write ``model`` (+ ``tokenizer``) to ``out_dir`` in Hugging Face format; returns a summary
    ``{"format", "files", "notes"}``."""
    kind = export_format(model_config)
    family = FORMATS[kind]
    out = claim_output_dir(out_dir, HF_KIND)
    config = family.export_config(model_config)
    config.update(_special_ids(tokenizer))
    start_role = DECODER_START_ROLE.get(kind)
    if start_role and tokenizer is not None and start_role in tokenizer.special_tokens:
        config["decoder_start_token_id"] = tokenizer.special_tokens[start_role]
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in family.export_tensors(model, model_config).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    files = ["config.json", "model.safetensors"]
    notes: list[str] = []
    if tokenizer is not None:
        files += write_tokenizer(tokenizer, out, notes)
    return {"format": kind, "out": str(out), "files": files, "notes": notes}


def _special_ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    if tokenizer is None:
        return {}
    specials = tokenizer.special_tokens
    return {f"{role}_token_id": specials[role] for role in ("bos", "eos", "pad") if role in specials}


def write_tokenizer(tokenizer: Tokenizer, out: Path, notes: list[str]) -> list[str]:
    """``tokenizer.json`` + ``tokenizer_config.json`` for ``tokenizer``; the files written."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None and isinstance(tokenizer, CharTokenizer):
        backend = char_backend(tokenizer)
        notes.append("character tokenizer written as a WordLevel tokenizer.json splitting every character")
    if backend is None:
        notes.append(f"tokenizer kind {tokenizer.kind!r} has no tokenizer.json form; copy its files by hand")
        return []
    backend.save(str(out / "tokenizer.json"))
    roles = getattr(tokenizer, "roles", {}) or {}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for role, token in roles.items():
        if role in ("bos", "eos", "unk", "pad", "mask", "sep", "cls"):
            config[f"{role}_token"] = token
    template = getattr(tokenizer, "chat_template", None)
    if template:
        config["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ["tokenizer.json", "tokenizer_config.json"]


def char_backend(tokenizer: CharTokenizer):
    """A ``tokenizers`` WordLevel pipeline equal to a character tokenizer."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFBackend

    from lmlab.tokenizers.char import UNK_TOKEN

    vocab = {tokenizer.id_to_token(i): i for i in range(tokenizer.vocab_size)}
    backend = HFBackend(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if tokenizer.added_tokens:
        backend.add_special_tokens(list(tokenizer.added_tokens))
    return backend
