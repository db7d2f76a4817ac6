"""Write an lmlab model as a Hugging Face model directory that ``transformers`` loads with the same
logits: ``config.json``, ``model.safetensors`` and the tokenizer files.

Formats (see :data:`FORMATS`): a decoder with learned positions, pre-LayerNorm and a plain
activation (lmlab's default) → GPT-2; a decoder with RoPE, RMSNorm and SwiGLU → Llama; a
post-LayerNorm encoder with learned positions → RoBERTa when its tokenizer opens texts with ``<s>``,
BERT otherwise (one all-zero token type); a pre-LayerNorm one → XLM-RoBERTa-XL; MLM heads, bare
encoders and classifiers pooling as BERT does (with ``id2label``) as the matching
``*ForMaskedLM`` / ``*Model`` / ``*ForSequenceClassification``; a post-LayerNorm encoder-decoder with
learned positions → BART, a pre-LayerNorm one → Blenderbot; a pre-norm, bias-free encoder-decoder
with T5 relative positions → T5 (a bias-free LayerNorm becomes T5's RMSNorm exactly: the
embeddings and every projection into the residual stream are written mean-free, so the stream has
zero mean and the two norms agree). A model without biases is written with zero biases where the
format has them. A decoder classifier (last-token score) is written as
``GPT2ForSequenceClassification`` / ``LlamaForSequenceClassification``, with ``pad_token_id`` = EOS
when the tokenizer has no pad token (transformers finds each row's last token by it).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop import bart, bert, blenderbot, gpt2, llama, roberta, t5
from lmlab.models import ModelConfig
from lmlab.output_dir import claim_output_dir
from lmlab.tokenizers import CharTokenizer, Tokenizer

ROBERTA_CLS = "<s>"  # RoBERTa's tokenizers open a text with <s> where BERT's have [CLS]
DEFAULT_PAD_ID = 1  # RoBERTa's, when the tokenizer has no pad token
HF_KIND = "hf-model"  # the kind of output (see lmlab.output_dir) an exported directory is


@dataclass(frozen=True)
class Format:
    """A Hugging Face model type lmlab writes: the backbone it holds, the check that a config has
    its equivalent, its ``config.json`` and state dict. ``positions_from_pad``: RoBERTa-style
    positions, numbered after the pad id (its functions take the pad id too); ``fits_tokenizer``:
    whether the format suits the run's tokenizer; ``decoder_start``: the tokenizer role an
    encoder-decoder's decoder starts from (BART and lmlab's denoising start from EOS, T5 and
    lmlab's span corruption and UL2 from PAD)."""

    name: str
    backbone: str
    check: Callable[[ModelConfig], None]
    config: Callable[..., dict]
    tensors: Callable[..., dict]
    positions_from_pad: bool = False
    fits_tokenizer: Callable[[Tokenizer | None], bool] = lambda tokenizer: True
    decoder_start: str | None = None


def roberta_shaped(tokenizer: Tokenizer | None) -> bool:
    """Whether a tokenizer frames texts the RoBERTa way (``<s>`` … ``</s>``, not ``[CLS]`` … ``[SEP]``)."""
    if tokenizer is None:
        return False
    specials = tokenizer.special_tokens
    opener = specials.get("cls", specials.get("bos"))
    return opener is not None and tokenizer.id_to_token(opener) == ROBERTA_CLS


# Tried in order: the first format whose check passes is written.
FORMATS = (
    Format("gpt2", "decoder", gpt2.check_exportable, gpt2.export_config, gpt2.export_tensors),
    Format("llama", "decoder", llama.check_exportable, llama.export_config, llama.export_tensors),
    Format("roberta", "encoder", roberta.check_exportable, roberta.export_config, roberta.export_tensors,
           positions_from_pad=True, fits_tokenizer=roberta_shaped),
    Format("bert", "encoder", bert.check_exportable, bert.export_config, bert.export_tensors),
    Format("xlm-roberta-xl", "encoder", roberta.check_exportable_xl, roberta.export_config_xl, roberta.export_tensors_xl,
           positions_from_pad=True),
    Format("bart", "encoder-decoder", bart.check_exportable, bart.export_config, bart.export_tensors, decoder_start="eos"),
    Format("blenderbot", "encoder-decoder", blenderbot.check_exportable, blenderbot.export_config,
           blenderbot.export_tensors, decoder_start="pad"),
    Format("t5", "encoder-decoder", t5.check_exportable, t5.export_config, t5.export_tensors, decoder_start="pad"),
)


def export_format(config: ModelConfig, tokenizer: Tokenizer | None = None) -> Format:
    """The Hugging Face format an lmlab config (with its tokenizer) is written as; an error if there is none."""
    if config.backbone == "encoder" and config.head == "classifier" and config.pooling == "mean":
        raise LmlabError(
            "cannot export this classifier to Hugging Face: pooling='mean' has no *ForSequenceClassification "
            "equivalent (BERT and RoBERTa pool the first token through dense → tanh); fine-tune with --pooling cls"
        )
    errors = []
    candidates = [f for f in FORMATS if f.backbone == config.backbone and f.fits_tokenizer(tokenizer)] or list(FORMATS)
    for candidate in candidates:
        try:
            candidate.check(config)
            return candidate
        except LmlabError as exc:
            errors.append(str(exc))
    raise LmlabError(
        "cannot export this model to Hugging Face: " + "; ".join(errors)
        + " (export supports GPT-2-shaped and Llama-shaped decoders, BERT/RoBERTa-shaped (post-norm) and"
        " XLM-RoBERTa-XL-shaped (pre-norm) encoders, and BART-, Blenderbot- or T5-shaped encoder-decoders)"
    )


def export_hf(model: nn.Module, model_config: ModelConfig, tokenizer: Tokenizer | None, out_dir: str | Path,
              labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``model`` (+ ``tokenizer``) to ``out_dir`` in Hugging Face format; returns a summary
    ``{"format", "files", "notes"}``. A classifier's classes are named ``labels`` (else LABEL_i)."""
    target = export_format(model_config, tokenizer)
    out = claim_output_dir(out_dir, HF_KIND)
    pad = (pad_id(tokenizer),) if target.positions_from_pad else ()
    config = target.config(model_config, *pad)
    config.update(_special_ids(tokenizer))
    if model_config.head == "classifier":
        config.update(label_maps(model_config.num_labels, labels))
        if model_config.backbone == "decoder" and "pad_token_id" not in config and "eos_token_id" in config:
            config["pad_token_id"] = config["eos_token_id"]  # how *ForSequenceClassification finds the last token
    if target.decoder_start and tokenizer is not None and target.decoder_start in tokenizer.special_tokens:
        config["decoder_start_token_id"] = tokenizer.special_tokens[target.decoder_start]
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    written = target.tensors(model, model_config, *pad)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in written.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    files = ["config.json", "model.safetensors"]
    notes: list[str] = []
    if tokenizer is not None:
        files += write_tokenizer(tokenizer, out, notes)
    return {"format": target.name, "out": str(out), "files": files, "notes": notes}


def pad_id(tokenizer: Tokenizer | None) -> int:
    """The pad id RoBERTa-style positions are numbered after."""
    return tokenizer.special_tokens.get("pad", DEFAULT_PAD_ID) if tokenizer is not None else DEFAULT_PAD_ID


def label_maps(num_labels: int, labels: Sequence[str] | None) -> dict[str, dict]:
    """``id2label`` / ``label2id`` of a classifier: ``labels`` in class order, else LABEL_0, LABEL_1, ..."""
    names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(num_labels)]
    if len(names) != num_labels or len(set(names)) != num_labels:
        raise LmlabError(f"the classifier has {num_labels} classes but {len(names)} distinct label names were given; "
                         "give one name per class")
    return {"id2label": {str(i): name for i, name in enumerate(names)}, "label2id": {name: i for i, name in enumerate(names)}}


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
