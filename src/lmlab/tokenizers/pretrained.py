"""The tokenizer of a pretrained model — a Hugging Face directory or GGUF metadata — as an lmlab tokenizer.

:func:`load_pretrained_tokenizer` reads, in this order of preference:

* ``tokenizer.json`` — any Hugging Face ``tokenizers`` pipeline, used as stored;
* ``vocab.json`` + ``merges.txt`` — byte-level BPE as in GPT-2 (``<s> X </s>`` as in RoBERTa
  when the tokenizer class or model type says so), ``add_prefix_space`` from the config;
* ``vocab.txt`` — WordPiece as in BERT (``BertNormalizer``, ``[CLS] X [SEP]``), lower-casing
  per ``do_lower_case``;
* ``tokenizer.model`` / ``spiece.model`` / ``sentencepiece.bpe.model`` — a SentencePiece model,
  run by the ``sentencepiece`` package (:class:`SentencePieceTokenizer`).

Special tokens come from ``tokenizer_config.json`` / ``special_tokens_map.json`` (falling back to
each format's usual tokens), the chat template from ``tokenizer_config.json``'s
``chat_template`` or a ``chat_template.jinja`` file. :func:`tokenizer_from_gguf_metadata`
builds the tokenizer a GGUF file describes (``tokenizer.ggml.model`` ``"gpt2"`` or ``"llama"``).

Encoding adds special tokens only with ``add_special_tokens=True``, which then matches the
``transformers`` tokenizer's default encoding.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer, register_tokenizer
from lmlab.tokenizers.hf import HF_TOKENIZER_FILE, SPECIAL_TOKENS_MAP_FILE, HFTokenizer, first_line

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_CONFIG_FILE = "config.json"
VOCAB_JSON_FILE, MERGES_FILE, VOCAB_TXT_FILE = "vocab.json", "merges.txt", "vocab.txt"
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
LOOKED_FOR = (
    HF_TOKENIZER_FILE,
    f"{VOCAB_JSON_FILE}+{MERGES_FILE}",
    VOCAB_TXT_FILE,
    *SENTENCEPIECE_FILES,
)
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


# ---------------------------------------------------------------- chat templates


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render a Hugging Face chat template (Jinja) in a sandbox, as ``transformers`` does.

    ``variables`` (e.g. ``bos_token``, ``tools``) are visible to the template; templates may
    call ``raise_exception(message)`` and ``strftime_now(format)`` and use the ``tojson`` filter.
    """

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(template).render(
            messages=[dict(message) for message in messages],
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as exc:
        raise LmlabError(
            f"the chat template failed: {first_line(exc)}; check the messages"
        ) from exc


class ChatTemplateMixin:
    """Adds ``chat_template`` and :meth:`apply_chat_template` to a tokenizer with ``roles``."""

    chat_template: str | None
    roles: dict[str, str]

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The conversation rendered by the model's chat template (special tokens as strings)."""
        if self.chat_template is None:
            raise LmlabError(
                "this tokenizer has no chat template; load a chat model's tokenizer or set one"
            )
        tokens = {f"{role}_token": token for role, token in self.roles.items()}
        return render_chat_template(
            self.chat_template, messages, add_generation_prompt, **{**tokens, **variables}
        )


# ---------------------------------------------------------------- tokenizer kinds


@register_tokenizer("hf-pretrained")
class PretrainedHFTokenizer(ChatTemplateMixin, HFTokenizer):
    """A pretrained ``tokenizers`` pipeline with its special-token roles and chat template."""

    def __init__(
        self,
        backend: HFBackend,
        roles: Mapping[str, str] | None = None,
        chat_template: str | None = None,
    ):
        super().__init__(backend, roles)
        self.chat_template = chat_template

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "chat_template": self.chat_template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainedHFTokenizer":
        plain = HFTokenizer.from_dict(data)
        return cls(plain.backend, plain.roles, data.get("chat_template"))


def _sentencepiece_module() -> Any:
    """The ``sentencepiece`` package, or an error saying how to get it."""
    try:
        import sentencepiece
    except ImportError as exc:
        raise LmlabError(
            "this tokenizer is a SentencePiece model; install the sentencepiece package "
            "(pip install sentencepiece)"
        ) from exc
    return sentencepiece


@register_tokenizer("sentencepiece")
class SentencePieceTokenizer(ChatTemplateMixin, Tokenizer):
    """A SentencePiece model (``tokenizer.model`` / ``spiece.model``) run by ``sentencepiece``.

    Special-token strings in the text are kept whole, as ``transformers`` does; text after one
    gets no dummy-prefix space. ``add_special_tokens=True`` wraps a text in bos/eos as
    ``add_bos``/``add_eos`` say. The model bytes are stored in :meth:`to_dict`.

    Plain text encodes exactly as SentencePiece does. ``transformers``' converted Llama tokenizer
    differs from SentencePiece (and from this class) on text starting with whitespace: it does not
    add the dummy-prefix ``▁`` in front of an existing space.
    """

    def __init__(
        self,
        model: bytes,
        roles: Mapping[str, str] | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
    ):
        try:
            self.processor = _sentencepiece_module().SentencePieceProcessor(model_proto=model)
        except RuntimeError as exc:
            raise LmlabError(
                f"not a valid SentencePiece model ({first_line(exc)}); re-download it"
            ) from exc
        self.model = model
        self.roles = dict(self._default_roles() if roles is None else roles)
        unknown = {
            role: token for role, token in self.roles.items() if self.token_to_id(token) is None
        }
        if unknown:
            raise LmlabError(
                f"special tokens {unknown} are not in the SentencePiece vocabulary; fix the roles"
            )
        for role, flag in (("bos", add_bos), ("eos", add_eos)):
            if flag and role not in self.roles:
                raise LmlabError(
                    f"add_{role} is set but the tokenizer has no {role} token; name one in the roles"
                )
        self.add_bos, self.add_eos = add_bos, add_eos
        self.chat_template = chat_template
        self._special_pattern = _alternation(set(self.roles.values()))
        self._unk_piece = self.processor.id_to_piece(self.processor.unk_id())
        self._unk_prefix_length = len(self.processor.encode(self._unk_piece))
        self._dummy_prefix = self.processor.encode("a", out_type=str)[0].startswith("▁")

    def _default_roles(self) -> dict[str, str]:
        """The roles the model itself declares (its bos/eos/unk/pad pieces)."""
        ids = {
            "bos": self.processor.bos_id(),
            "eos": self.processor.eos_id(),
            "unk": self.processor.unk_id(),
            "pad": self.processor.pad_id(),
        }
        return {role: self.processor.id_to_piece(i) for role, i in ids.items() if i >= 0}

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return {role: self.processor.piece_to_id(token) for role, token in self.roles.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text → ids; ``add_special_tokens`` adds bos/eos as the model's config asks."""
        ids: list[int] = []
        for position, part in enumerate(_split_on(self._special_pattern, text)):
            if position % 2:  # odd parts are the special tokens the text was cut at
                ids.append(self.processor.piece_to_id(part))
            elif part:
                ids.extend(self._encode_plain(part, first=position == 0))
        if add_special_tokens and self.add_bos:
            ids.insert(0, self.special_tokens["bos"])
        if add_special_tokens and self.add_eos:
            ids.append(self.special_tokens["eos"])
        return ids

    def _encode_plain(self, text: str, first: bool) -> list[int]:
        """Ids of text holding no special token. Only the text's first part gets the dummy-prefix
        space: a later part is encoded behind the unknown piece, whose ids are then dropped."""
        if first:
            return self.processor.encode(text)
        return self.processor.encode(self._unk_piece + text)[self._unk_prefix_length :]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids → text; special tokens are written out unless ``skip_special_tokens``."""
        ids = self._checked(ids)
        special = set(self.special_tokens.values())
        if skip_special_tokens:
            return self.processor.decode([token_id for token_id in ids if token_id not in special])
        parts, run = [], []
        for token_id in ids:
            if token_id in special:
                parts += [
                    self._decode_run(run, first=not parts),
                    self.processor.id_to_piece(token_id),
                ]
                run = []
            else:
                run.append(token_id)
        return "".join(parts + [self._decode_run(run, first=not parts)])

    def _decode_run(self, run: list[int], first: bool) -> str:
        """Text of ids holding no special token. SentencePiece drops the space of a leading ``▁``
        (the dummy prefix); after a special token that space is real text, so it is kept."""
        text = self.processor.decode(run)
        if (
            run
            and not first
            and self._dummy_prefix
            and self.processor.id_to_piece(run[0]).startswith("▁")
        ):
            text = " " + text
        return text

    def _checked(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise LmlabError(f"ids {bad[:10]} are outside the vocabulary (size {self.vocab_size})")
        return ids

    def token_to_id(self, token: str) -> int | None:
        token_id = self.processor.piece_to_id(token)
        return token_id if self.processor.id_to_piece(token_id) == token else None

    def id_to_token(self, token_id: int) -> str:
        return self.processor.id_to_piece(self._checked([token_id])[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": base64.b64encode(self.model).decode("ascii"),
            "roles": dict(self.roles),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "chat_template": self.chat_template,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SentencePieceTokenizer":
        return cls(
            base64.b64decode(data["model"]),
            data.get("roles"),
            data.get("add_bos", False),
            data.get("add_eos", False),
            data.get("chat_template"),
        )


def _alternation(tokens: set[str]) -> re.Pattern[str] | None:
    """A regex matching any of ``tokens`` (longest first), or None for no tokens."""
    if not tokens:
        return None
    return re.compile(
        "(" + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")"
    )


def _split_on(pattern: re.Pattern[str] | None, text: str) -> list[str]:
    """``text`` cut around every match of ``pattern`` (matches kept as their own parts)."""
    return [text] if pattern is None else pattern.split(text)


# ---------------------------------------------------------------- pretrained directories


def load_pretrained_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a Hugging Face model directory (see the module docstring for the formats)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise LmlabError(f"tokenizer directory {directory} does not exist; pass a model directory")
    config = _read_json(folder / TOKENIZER_CONFIG_FILE)
    chat_template = _chat_template(folder, config)
    if (folder / HF_TOKENIZER_FILE).is_file():
        return _from_tokenizer_json(folder, config, chat_template)
    if (folder / VOCAB_JSON_FILE).is_file() and (folder / MERGES_FILE).is_file():
        return _from_byte_level_bpe(folder, config, chat_template)
    if (folder / VOCAB_TXT_FILE).is_file():
        return _from_wordpiece(folder, config, chat_template)
    for name in SENTENCEPIECE_FILES:
        if (folder / name).is_file():
            return _from_sentencepiece(folder / name, config, chat_template)
    raise LmlabError(
        f"no tokenizer in {directory}: looked for {', '.join(LOOKED_FOR)}; copy the model's tokenizer files there"
    )


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an empty dict when there is no such file."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmlabError(f"{path} is not valid JSON ({exc}); fix or re-download it") from exc
    if not isinstance(data, dict):
        raise LmlabError(f"{path} does not hold a JSON object; fix or re-download it")
    return data


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


def _add_special_tokens(
    backend: HFBackend, roles: Mapping[str, str], config: Mapping[str, Any]
) -> None:
    """Register the config's added tokens and every role's token with the backend, as
    ``transformers`` does, so that they are matched whole in text (ids of known tokens are kept)."""
    existing = {token.content for token in backend.get_added_tokens_decoder().values()}
    declared = config.get("added_tokens_decoder") or {}
    added = [
        AddedToken(
            entry["content"],
            special=entry.get("special", True),
            normalized=entry.get("normalized", False),
            lstrip=entry.get("lstrip", False),
            rstrip=entry.get("rstrip", False),
            single_word=entry.get("single_word", False),
        )
        for _, entry in sorted(declared.items(), key=lambda item: int(item[0]))
        if entry.get("content") not in existing
    ]
    existing |= {token.content for token in added}
    added += [
        AddedToken(token, special=True, normalized=False)
        for token in dict.fromkeys(roles.values())
        if token not in existing
    ]
    backend.add_tokens([token for token in added if not token.special])
    backend.add_special_tokens([token for token in added if token.special])


def _bos_eos_template(
    backend: HFBackend, roles: Mapping[str, str], add_bos: bool, add_eos: bool
) -> None:
    """A post-processor wrapping texts in bos/eos as asked (``add_bos_token``/``add_eos_token``)."""
    bos = roles.get("bos") if add_bos else None
    eos = roles.get("eos") if add_eos else None

    def wrapped(sequence: str, type_id: int) -> list[str]:
        return [f"{token}:{type_id}" for token in (bos, sequence, eos) if token is not None]

    backend.post_processor = processors.TemplateProcessing(
        single=" ".join(wrapped("$A", 0)),
        pair=" ".join(wrapped("$A", 0) + wrapped("$B", 1)),
        special_tokens=[
            (token, backend.token_to_id(token)) for token in dict.fromkeys((bos, eos)) if token
        ],
    )


def _load_backend(path: Path) -> HFBackend:
    try:
        return HFBackend.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for malformed files
        raise LmlabError(
            f"{path} is not a valid Hugging Face tokenizer file ({first_line(exc)})"
        ) from exc


def _from_tokenizer_json(
    folder: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """A ``tokenizer.json`` pipeline as stored (its post-processor decides which special tokens
    encoding adds; like ``transformers``, the config's ``add_bos_token`` does not override it)."""
    backend = _load_backend(folder / HF_TOKENIZER_FILE)
    roles = _roles(folder, config, {})
    _add_special_tokens(backend, roles, config)
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
    """GPT-2/RoBERTa byte-level BPE from ``vocab.json`` + ``merges.txt``."""
    vocab = _read_json(folder / VOCAB_JSON_FILE)
    model = models.BPE(vocab=vocab, merges=_read_merges(folder / MERGES_FILE), fuse_unk=False)
    backend = HFBackend(model)
    add_prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    roberta = _is_roberta_style(folder, config)
    roles = _roles(folder, config, ROBERTA_ROLES if roberta else GPT2_ROLES)
    _add_special_tokens(backend, roles, config)
    if roberta:
        backend.post_processor = processors.RobertaProcessing(
            (roles["sep"], backend.token_to_id(roles["sep"])),
            (roles["cls"], backend.token_to_id(roles["cls"])),
            trim_offsets=bool(config.get("trim_offsets", True)),
            add_prefix_space=add_prefix_space,
        )
    else:
        _bos_eos_template(
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
    folder: Path, config: Mapping[str, Any], chat_template: str | None
) -> Tokenizer:
    """BERT's WordPiece from ``vocab.txt``, set up as ``transformers``' ``BertTokenizer``."""
    roles = _roles(folder, config, BERT_ROLES)
    backend = HFBackend(
        models.WordPiece(_read_vocab_txt(folder / VOCAB_TXT_FILE), unk_token=roles["unk"])
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    _add_special_tokens(backend, roles, config)
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


# ---------------------------------------------------------------- GGUF metadata

GGUF_KEY = "tokenizer.ggml."
CONTROL_TOKEN, USER_DEFINED_TOKEN = (
    3,
    4,
)  # llama.cpp's token types (1 normal, 2 unknown, 5 unused, 6 byte)
GGUF_ROLE_KEYS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
    "mask": "mask_token_id",
    "sep": "seperator_token_id",
    "cls": "cls_token_id",
}
_GPT2_SPLIT = None  # the ByteLevel pre-tokenizer's own regex
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's ``tokenizer.ggml.pre`` names → how byte-level BPE splits text before merging.
GGUF_PRE_TOKENIZERS: dict[str, str | None] = {
    "default": _GPT2_SPLIT,
    "gpt-2": _GPT2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer described by a GGUF file's ``tokenizer.*`` metadata.

    ``tokenizer.ggml.model`` ``"gpt2"`` is byte-level BPE with the stored merges (split as
    ``tokenizer.ggml.pre`` says); ``"llama"`` is SentencePiece-style BPE with byte fallback, its
    merges recovered from the token scores as ``transformers`` does. Control tokens and the role
    tokens (bos, eos, unk, ...) become special tokens, user-defined ones added tokens; bos/eos are
    added per ``add_bos_token``/``add_eos_token`` (bos by default for ``"llama"``). The chat
    template comes from ``tokenizer.chat_template``.

    Like ``transformers``, a ``"llama"`` vocabulary prepends the ``▁`` only when the text does not
    already start with a space; SentencePiece and llama.cpp always prepend it, so texts starting
    with whitespace can encode differently from them.
    """
    kind = meta.get(GGUF_KEY + "model")
    tokens = meta.get(GGUF_KEY + "tokens")
    if kind not in ("gpt2", "llama") or not tokens:
        raise LmlabError(
            f"cannot build a tokenizer from GGUF metadata with tokenizer.ggml.model {kind!r} and "
            f"{len(tokens or ())} tokens; only 'gpt2' and 'llama' vocabularies are supported"
        )
    types = list(meta.get(GGUF_KEY + "token_type") or [1] * len(tokens))
    if kind == "gpt2":
        tokens = _byte_level_spelling(tokens)
        backend = _gguf_byte_level_bpe(meta, tokens)
    else:
        backend = _gguf_sentencepiece_bpe(meta, tokens)
    roles = {
        role: tokens[meta[GGUF_KEY + key]]
        for role, key in GGUF_ROLE_KEYS.items()
        if 0 <= meta.get(GGUF_KEY + key, -1) < len(tokens)
    }
    _add_gguf_tokens(backend, tokens, types, byte_level=kind == "gpt2")
    _add_special_tokens(backend, roles, {})
    _bos_eos_template(
        backend,
        roles,
        bool(meta.get(GGUF_KEY + "add_bos_token", kind == "llama")),
        bool(meta.get(GGUF_KEY + "add_eos_token", False)),
    )
    return PretrainedHFTokenizer(backend, roles, meta.get("tokenizer.chat_template"))


def _byte_level_spelling(tokens: Sequence[str]) -> list[str]:
    """Tokens written in the byte-level alphabet (a few files store some as plain UTF-8)."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    spelling = _byte_to_unicode()
    return [
        (
            token
            if set(token) <= alphabet
            else "".join(spelling[byte] for byte in token.encode("utf-8"))
        )
        for token in tokens
    ]


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _gguf_byte_level_bpe(meta: Mapping[str, Any], tokens: list[str]) -> HFBackend:
    """Byte-level BPE from the stored tokens and merges, split per ``tokenizer.ggml.pre``."""
    pre = meta.get(GGUF_KEY + "pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise LmlabError(
            f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(GGUF_PRE_TOKENIZERS)}"
        )
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get(GGUF_KEY + "merges") or ()]
    backend = HFBackend(models.BPE(vocab=_vocab(tokens), merges=merges, fuse_unk=False))
    split = GGUF_PRE_TOKENIZERS[pre]
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _gguf_sentencepiece_bpe(meta: Mapping[str, Any], tokens: list[str]) -> HFBackend:
    """SentencePiece-style BPE (▁ for spaces, byte fallback) from tokens and scores, as ``transformers``'
    ``LlamaTokenizer``; merges are the stored ones or recovered from the scores."""
    stored = meta.get(GGUF_KEY + "merges")
    scores = meta.get(GGUF_KEY + "scores") or [float(-index) for index in range(len(tokens))]
    merges = (
        [tuple(merge.split(" ", 1)) for merge in stored]
        if stored
        else merges_from_scores(tokens, scores)
    )
    backend = HFBackend(
        models.BPE(vocab=_vocab(tokens), merges=merges, fuse_unk=True, byte_fallback=True)
    )
    prefix = bool(meta.get(GGUF_KEY + "add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(content=" ", left=1)] * prefix)
    return backend


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    """Token → id (a token listed twice keeps its last id, as ``transformers`` does)."""
    return {token: index for index, token in enumerate(tokens)}


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best token score first (ties: longer left part, then longer right part, then vocabulary order).
    """
    ids = _vocab(tokens)
    candidates = []
    for token, score in dict(zip(tokens, scores)).items():
        pairs = [
            (token[:cut], token[cut:])
            for cut in range(1, len(token))
            if token[:cut] in ids and token[cut:] in ids
        ]
        pairs.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        candidates += [(score, pair) for pair in pairs]
    candidates.sort(key=lambda item: (item[0], len(item[1][0]), len(item[1][1])), reverse=True)
    return [pair for _, pair in candidates]


def _add_gguf_tokens(
    backend: HFBackend, tokens: Sequence[str], types: Sequence[int], byte_level: bool
) -> None:
    """Control tokens as special tokens and user-defined ones as added tokens, so text keeps them whole.

    In a byte-level vocabulary a control token outside the byte alphabet is a mislabel and is skipped.
    """
    alphabet = set(pre_tokenizers.ByteLevel.alphabet()) if byte_level else None
    control = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(tokens, types)
        if kind == CONTROL_TOKEN and (alphabet is None or set(token) <= alphabet)
    ]
    user = [
        AddedToken(token, special=False, normalized=False)
        for token, kind in zip(tokens, types)
        if kind == USER_DEFINED_TOKEN
    ]
    backend.add_special_tokens(control)
    backend.add_tokens(user)
