"""The tokenizer a GGUF file's ``tokenizer.*`` metadata describes (``tokenizer.ggml.model``
``"gpt2"`` byte-level BPE or ``"llama"`` SentencePiece-style BPE), as an lmlab tokenizer."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer
from lmlab.tokenizers.hf_pretrained import (
    PretrainedHFTokenizer,
    add_special_tokens,
    bos_eos_template,
)

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
    add_special_tokens(backend, roles, {})
    bos_eos_template(
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
