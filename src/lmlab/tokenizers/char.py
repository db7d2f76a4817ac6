"""Character-level tokenizer: one id per distinct character of the training corpus."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer, register_tokenizer

UNK_TOKEN = "\ufffd"  # stands for any character outside the vocabulary when ``unk`` is enabled


@register_tokenizer("char")
class CharTokenizer(Tokenizer):
    """Maps each character to its index in a sorted alphabet.

    By default, a character outside the alphabet is an error naming it. With ``unk=True`` an
    explicit unknown token (``U+FFFD``) is appended to the vocabulary and such characters map to it.

    ``special_tokens`` (role → token string, e.g. ``{"mask": "<mask>", "eos": "</s>"}``) and
    ``extra_tokens`` (e.g. T5 sentinels ``<extra_id_0>`` …) get ids after the alphabet. They are
    never produced by :meth:`encode` from plain text; objectives insert them by id.
    """

    def __init__(
        self,
        chars: Sequence[str],
        unk: bool = False,
        special_tokens: Mapping[str, str] | None = None,
        extra_tokens: Sequence[str] = (),
    ):
        alphabet = sorted(set(chars) - {UNK_TOKEN}) if unk else sorted(set(chars))
        if unk:
            alphabet.append(UNK_TOKEN)
        if not alphabet:
            raise LmlabError("a character tokenizer needs at least one character; is the corpus empty?")
        self.chars = alphabet
        self.unk = unk
        self.roles = dict(special_tokens or {})
        added = list(dict.fromkeys([*self.roles.values(), *extra_tokens]))
        self.added_tokens = [token for token in added if token not in alphabet]
        self.extra_tokens = list(extra_tokens)
        self._vocab = alphabet + self.added_tokens
        self._index = {token: i for i, token in enumerate(self._vocab)}

    @classmethod
    def from_text(cls, text: str, unk: bool = False, **special: Any) -> "CharTokenizer":
        """Build the alphabet from every distinct character of ``text``."""
        return cls(set(text), unk=unk, **special)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def special_tokens(self) -> dict[str, int]:
        roles = {role: self._index[token] for role, token in self.roles.items()}
        if self.unk:
            roles["unk"] = self._index[UNK_TOKEN]
        return roles

    def encode(self, text: str) -> list[int]:
        index = self._index
        try:
            return [index[ch] for ch in text]
        except KeyError:
            if self.unk:
                unk_id = index[UNK_TOKEN]
                return [index.get(ch, unk_id) for ch in text]
            unknown = sorted({ch for ch in text if ch not in index})
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise LmlabError(
                f"characters not in the tokenizer's vocabulary: {shown}{more}; remove them from "
                "the text or train with data.unk=true to map them to an unknown token"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        vocab = self._vocab
        bad = [i for i in ids if not 0 <= i < len(vocab)]
        if bad:
            raise LmlabError(f"ids {bad[:10]} are outside the vocabulary (size {len(vocab)})")
        return "".join(vocab[i] for i in ids)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self._vocab[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "chars": "".join(c for c in self.chars if not (self.unk and c == UNK_TOKEN)),
            "unk": self.unk,
            "special_tokens": self.roles,
            "extra_tokens": self.extra_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        return cls(
            list(data["chars"]),
            unk=bool(data.get("unk", False)),
            special_tokens=data.get("special_tokens"),
            extra_tokens=data.get("extra_tokens", ()),
        )
