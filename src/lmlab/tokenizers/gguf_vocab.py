"""The tokenizer a GGUF file's ``tokenizer.*`` metadata describes (``tokenizer.ggml.model``
``"gpt2"`` byte-level BPE or ``"llama"`` SentencePiece-style BPE), as an lmlab tokenizer: from the
metadata (:func:`tokenizer_from_gguf_metadata`) or from the file (:func:`tokenizer_from_gguf_file`,
which reads only the metadata, through the ``gguf`` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer
from lmlab.tokenizers.hf import first_line
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
# How byte-level BPE splits text before merging: regexes applied in turn, each splitting the pieces
# the previous one made (what it matches and what lies between matches both become pieces), as in
# llama.cpp's llama-vocab.cpp.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
# DeepSeek LLM's letters: the cased letters (Lu, Ll, Lt) of these blocks, as code point ranges.
_DEEPSEEK_CASED = (
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA),
    (0x1BC, 0x1BF), (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377),
    (0x37B, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C),
    (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556),
    (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113),
    (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128),
    (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787),
    (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
)
_DEEPSEEK_LETTERS = r"\s?[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _DEEPSEEK_CASED) + "]+"
_CJK = r"[一-龥ࠀ-一가-퟿]+"
SPLIT_RULES: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "qwen35": (_QWEN35,),
    "tekken": (_TEKKEN,),
    "gpt4o": (_GPT4O,),
    "starcoder": (r"\p{N}", _GPT2),  # digits one by one, then GPT-2's split
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "deepseek-llm": (r"[\r\n]", _DEEPSEEK_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", _CJK, r"\p{N}+"),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
    "chameleon": (
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        _GPT2,
    ),
}
# llama.cpp's ``tokenizer.ggml.pre`` names → their split rule. "default" (files converted before
# llama.cpp recorded pre-tokenizers) is split as GPT-2, like ``transformers`` does.
GGUF_PRE_TOKENIZERS: dict[str, str] = {
    **dict.fromkeys(
        ("default", "gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "gigachat",
         "jina-es", "jina-de", "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code"),
        "gpt2",
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano", "dbrx", "smaug-bpe", "chatglm-bpe", "glm4"),
        "llama3",
    ),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "megrez", "kormo", "f2llmv2", "stablelm2"), "qwen2"
    ),
    "qwen35": "qwen35",
    "tekken": "tekken",
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), "gpt4o"),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        "starcoder",
    ),
    "falcon": "falcon",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
    "deepseek-v3": "deepseek-v3",
    **dict.fromkeys(("bloom", "poro-chat", "gpt3-finnish"), "bloom"),
    "viking": "viking",
    "chameleon": "chameleon",
}


def tokenizer_from_gguf_file(path: str | Path) -> Tokenizer:
    """The tokenizer described by the ``tokenizer.*`` metadata of the GGUF file ``path``."""
    try:
        from gguf import GGUFReader, GGUFValueType
    except ModuleNotFoundError:
        raise LmlabError(f"reading {path} needs the gguf package; pip install gguf") from None

    try:
        fields = GGUFReader(path).fields
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError, ... on bad input
        raise LmlabError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); "
            "it is truncated or not GGUF, re-download or re-convert it"
        ) from exc

    def value(field: Any) -> Any:
        """A metadata field as plain Python: str, int, float, bool, or a list of them."""
        if field.types[0] == GGUFValueType.ARRAY:
            if field.types[-1] == GGUFValueType.STRING:
                return [_text(field.parts[index]) for index in field.data]
            return [item for index in field.data for item in field.parts[index].tolist()]
        if field.types[0] == GGUFValueType.STRING:
            return _text(field.parts[-1])
        return field.parts[-1].tolist()[0]

    return tokenizer_from_gguf_metadata(
        {name: value(field) for name, field in fields.items() if name.startswith("tokenizer.")}
    )


def _text(data: Any) -> str:
    """A stored string (a numpy byte array); invalid UTF-8, rare in vocabularies, is replaced."""
    return data.tobytes().decode("utf-8", errors="replace")


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
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get(GGUF_KEY + "merges") or ()]
    backend = HFBackend(_bpe_model(tokens, merges, fuse_unk=False))
    splits = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        for pattern in SPLIT_RULES[_split_rule(meta.get(GGUF_KEY + "pre", "default"))]
    ]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _split_rule(pre: str) -> str:
    """The split rule of a ``tokenizer.ggml.pre`` name."""
    if pre not in GGUF_PRE_TOKENIZERS:
        raise LmlabError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(sorted(GGUF_PRE_TOKENIZERS))}"
        )
    return GGUF_PRE_TOKENIZERS[pre]


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
    backend = HFBackend(_bpe_model(tokens, merges, fuse_unk=True, byte_fallback=True))
    prefix = bool(meta.get(GGUF_KEY + "add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(content=" ", left=1)] * prefix)
    return backend


def _bpe_model(tokens: Sequence[str], merges: list[tuple[str, str]], **options: bool) -> models.BPE:
    """A BPE model of the stored vocabulary and merges (merging tokens it lacks: a broken file)."""
    try:
        return models.BPE(vocab=_vocab(tokens), merges=merges, **options)
    except Exception as exc:  # the library raises a bare Exception for inconsistent merges
        raise LmlabError(
            f"the GGUF tokenizer metadata is inconsistent ({first_line(exc)}); "
            "re-download or re-convert the file"
        ) from exc


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
