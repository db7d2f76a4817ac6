"""Character-level tokenizer: one id per distinct character of the training corpus."""

from __future__ import annotations

from typing import Any, Sequence

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer, register_tokenizer

UNK_TOKEN = "\ufffd"  # stands for any character outside the vocabulary when ``unk`` is enabled


@register_tokenizer("char")
class CharTokenizer(Tokenizer):
    """Maps each character to its index in a sorted alphabet.

    By default, a character outside the alphabet is an error naming it. With ``unk=True`` an
    explicit unknown token (``U+FFFD``) is appended to the vocabulary and such characters map to it.
    """

    def __init__(self, chars: Sequence[str], unk: bool = False):
        alphabet = sorted(set(chars) - {UNK_TOKEN})
        if unk:
            alphabet.append(UNK_TOKEN)
        if not alphabet:
            raise LmlabError("a character tokenizer needs at least one character; is the corpus empty?")
        self.chars = alphabet
        self.unk = unk
        self._index = {ch: i for i, ch in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str, unk: bool = False) -> "CharTokenizer":
        """Build the alphabet from every distinct character of ``text``."""
        return cls(set(text), unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"unk": self._index[UNK_TOKEN]} if self.unk else {}

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
        chars = self.chars
        try:
            return "".join(chars[i] for i in ids)
        except IndexError:
            bad = [i for i in ids if not 0 <= i < len(chars)]
            raise LmlabError(f"ids {bad[:10]} are outside the vocabulary (size {len(chars)})") from None

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, token_id: int) -> str:
        return self.chars[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(c for c in self.chars if c != UNK_TOKEN), "unk": self.unk}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        return cls(list(data["chars"]), unk=bool(data.get("unk", False)))
