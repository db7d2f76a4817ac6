"""The tokenizer files of a Hugging Face model directory, read as an lmlab tokenizer.

:func:`read_hf_directory` reads, in this order of preference (:func:`read_hf_file` reads the one
file it is given, with the ``tokenizer_config.json`` beside it):

* ``tokenizer.json`` — any Hugging Face ``tokenizers`` pipeline, used as stored;
* ``vocab.json`` + ``merges.txt`` — byte-level BPE as in GPT-2 (``<s> X </s>`` as in RoBERTa
  when the tokenizer class or model type says so), ``add_prefix_space`` from the config;
* ``vocab.txt`` — WordPiece as in BERT (``BertNormalizer``, ``[CLS] X [SEP]``), lower-casing
  per ``do_lower_case``;
* ``tokenizer.model`` / ``spiece.model`` / ``sentencepiece.bpe.model`` — a SentencePiece model,
  run by the ``sentencepiece`` package (:class:`~lmlab.tokenizers.sentencepiece_model.SentencePieceTokenizer`).

Special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` (falling back to
each format's usual tokens), the chat template from ``tokenizer_config.json``'s
``chat_template`` or a ``chat_template.jinja`` file. Encoding adds special tokens only with
``add_special_tokens=True``, which then matches the ``transformers`` tokenizer's default encoding.
Callers go through :func:`lmlab.tokenizers.load_pretrained_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from lmlab.errors import LmlabError, read_json_file
from lmlab.tokenizers.base import Tokenizer
from lmlab.tokenizers.hf import HF_TOKENIZER_FILE, SPECIAL_TOKENS_MAP_FILE, first_line
from lmlab.tokenizers.hf_pretrained import (
    PretrainedHFTokenizer,
    add_special_tokens,
    bos_eos_template,
)
from lmlab.tokenizers.sentencepiece_model import SentencePieceTokenizer

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_CONFIG_FILE = "config.json"
VOCAB_JSON_FILE, MERGES_FILE, VOCAB_TXT_FILE = "vocab.json", "merges.txt", "vocab.txt"
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
PREFERENCE = (
    (HF_TOKENIZER_FILE,),
    (VOCAB_JSON_FILE, MERGES_FILE),
    (VOCAB_TXT_FILE,),
    *((name,) for name in SENTENCEPIECE_FILES),
)  # the files read from a directory, best first
LOOKED_FOR = tuple("+".join(names) for names in PREFERENCE)
ROLES = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")

# The special tokens each format's transformers class uses when the config names none.
GPT2_ROLES = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}
ROBERTA_ROLES = {
    "bos": "<s>",
    "eos": "</s>",
    "sep": "</s>",
    "cls": "<s>",
    "unk": "<unk>",
    "pad": "<pad>",
    "mask": "<mask>",
}
BERT_ROLES = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
ROBERTA_STYLE = (
    "roberta",
    "bart",
    "longformer",
)  # byte-level BPE families wrapping texts as <s> X </s>


def read_hf_directory(folder: Path) -> Tokenizer:
    """The tokenizer of the Hugging Face model directory ``folder`` (formats: the module docstring)."""
    for names in PREFERENCE:
        if all((folder / name).is_file() for name in names):
            return read_hf_file(folder / names[0])
    raise LmlabError(
        f"no tokenizer in {folder}: looked for {', '.join(LOOKED_FOR)}; copy the model's tokenizer files there"
    )


def read_hf_file(path: Path) -> Tokenizer:
    """The tokenizer of one tokenizer file of a Hugging Face model directory: a ``tokenizer.json``
    (any ``.json`` pipeline), ``vocab.json`` or ``merges.txt`` (read together), ``vocab.txt`` or a
    SentencePiece ``.model``, with the settings of the ``tokenizer_config.json`` beside it."""
    folder = path.parent
    config = _read_json(folder / TOKENIZER_CONFIG_FILE)
    chat_template = _chat_template(folder, config)
    if path.name in (VOCAB_JSON_FILE, MERGES_FILE):
        return _from_byte_level_bpe(folder, config, chat_template)
    if path.suffix == ".json":
        return _from_tokenizer_json(path, config, chat_template)
    if path.suffix == ".txt":
        return _from_wordpiece(path, config, chat_template)
    if path.suffix == ".model":
        return _from_sentencepiece(path, config, chat_template)
    raise LmlabError(
        f"{path} is not a tokenizer file lmlab reads: pass a {', '.join(LOOKED_FOR)} or .gguf file, "
        "or the directory holding it"
    )


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an empty dict when there is no such file."""
    if not path.is_file():
        return {}
    return read_json_file(path, "fix or re-download it", dict)


def _chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    """The chat template of ``tokenizer_config.json`` (its ``default`` one when it names several),
    else of ``chat_template.jinja``, else None."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {
            entry.get("name"): entry.get("template")
            for entry in template
            if isinstance(entry, dict)
        }
        template = named.get("default")
    if template is None and (folder / CHAT_TEMPLATE_FILE).is_file():
        template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    return template


def _token_content(value: Any) -> str | None:
    """A special token as configured: a string, or a serialised ``AddedToken`` dict."""
    return value.get("content") if isinstance(value, dict) else value


def _roles(folder: Path, config: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, str]:
    """Role → token: ``defaults``, updated by ``special_tokens_map.json`` then ``tokenizer_config.json``
    (a null there removes the role). bos/eos fall back to cls/sep, as in lmlab's WordPiece."""
    roles = dict(defaults)
    for source in (_read_json(folder / SPECIAL_TOKENS_MAP_FILE), config):
        for role in ROLES:
            if f"{role}_token" in source:
                content = _token_content(source[f"{role}_token"])
                if content is None:
                    roles.pop(role, None)
                else:
                    roles[role] = content
    for role, fallback in (("bos", "cls"), ("eos", "sep")):
        if role not in roles and fallback in roles:
            roles[role] = roles[fallback]
    return roles


def _load_backend(path: Path) -> HFBackend:
    try:
        return HFBackend.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for malformed files
        raise LmlabError(
            f"{path} is not a valid Hugging Face tokenizer file ({first_line(exc)})"
        ) from exc


def _from_tokenizer_json(
    path: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """A ``tokenizer.json`` pipeline as stored (its post-processor decides which special tokens
    encoding adds; like ``transformers``, the config's ``add_bos_token`` does not override it).
    The pad token of its padding settings is the pad role unless the config names one; the
    padding and truncation themselves are not applied (see
    :class:`~lmlab.tokenizers.hf.HFTokenizer`)."""
    backend = _load_backend(path)
    padding = backend.padding
    roles = _roles(path.parent, config, {"pad": padding["pad_token"]} if padding else {})
    add_special_tokens(backend, roles, config)
    return PretrainedHFTokenizer(backend, roles or None, chat_template)


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The pairs of a ``merges.txt`` (its ``#version`` header and blank lines skipped)."""
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise LmlabError(
                f"{path} line {number} is not a merge of two tokens: {line!r}; re-download it"
            )
        merges.append((pair[0], pair[1]))
    return merges


def _is_roberta_style(folder: Path, config: Mapping[str, Any]) -> bool:
    """Whether a byte-level BPE wraps texts as ``<s> X </s>`` (RoBERTa, BART), by tokenizer class or model type."""
    family = str(
        config.get("tokenizer_class")
        or _read_json(folder / MODEL_CONFIG_FILE).get("model_type")
        or ""
    )
    return family.lower().startswith(ROBERTA_STYLE)


def _from_byte_level_bpe(
    folder: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """GPT-2/RoBERTa byte-level BPE from ``vocab.json`` + ``merges.txt`` in ``folder``."""
    missing = [name for name in (VOCAB_JSON_FILE, MERGES_FILE) if not (folder / name).is_file()]
    if missing:
        raise LmlabError(
            f"{folder} has no {' or '.join(missing)}; byte-level BPE needs both "
            f"{VOCAB_JSON_FILE} and {MERGES_FILE}, copy them there"
        )
    vocab = _read_json(folder / VOCAB_JSON_FILE)
    model = models.BPE(vocab=vocab, merges=_read_merges(folder / MERGES_FILE), fuse_unk=False)
    backend = HFBackend(model)
    add_prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    roberta = _is_roberta_style(folder, config)
    roles = _roles(folder, config, ROBERTA_ROLES if roberta else GPT2_ROLES)
    add_special_tokens(backend, roles, config)
    if roberta:
        backend.post_processor = processors.RobertaProcessing(
            (roles["sep"], backend.token_to_id(roles["sep"])),
            (roles["cls"], backend.token_to_id(roles["cls"])),
            trim_offsets=bool(config.get("trim_offsets", True)),
            add_prefix_space=add_prefix_space,
        )
    else:
        bos_eos_template(
            backend, roles, config.get("add_bos_token", False), config.get("add_eos_token", False)
        )
    return PretrainedHFTokenizer(backend, roles, chat_template)


def _read_vocab_txt(path: Path) -> dict[str, int]:
    """A WordPiece ``vocab.txt``: one token a line, its line number the id."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {token: index for index, token in enumerate(lines)}


def _from_wordpiece(
    path: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """BERT's WordPiece from a ``vocab.txt``, set up as ``transformers``' ``BertTokenizer``."""
    roles = _roles(path.parent, config, BERT_ROLES)
    backend = HFBackend(models.WordPiece(_read_vocab_txt(path), unk_token=roles["unk"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    add_special_tokens(backend, roles, config)
    cls, sep = roles["cls"], roles["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    return PretrainedHFTokenizer(backend, roles, chat_template)


def _from_sentencepiece(
    path: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """A SentencePiece model. bos/eos are added as ``add_bos_token``/``add_eos_token`` say; without
    them, as ``transformers`` does, none for ``tokenizer.model`` and eos for T5's ``spiece.model``.
    """
    model = path.read_bytes()
    own_roles = SentencePieceTokenizer(model).roles
    roles = _roles(path.parent, config, own_roles)
    t5_style = path.name == "spiece.model" or str(config.get("tokenizer_class", "")).startswith(
        "T5"
    )
    return SentencePieceTokenizer(
        model,
        roles,
        add_bos=bool(config.get("add_bos_token", False)) and "bos" in roles,
        add_eos=bool(config.get("add_eos_token", t5_style)),
        chat_template=chat_template,
    )
