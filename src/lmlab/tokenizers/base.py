"""The interface every lmlab tokenizer shares, and the registry that saves and loads them.

A tokenizer turns text into a list of integer ids and back. Every kind (character, byte-level
BPE, WordPiece, chess PGN, ...) subclasses :class:`Tokenizer`, registers itself under a short
``kind`` name with :func:`register_tokenizer`, and serialises to a JSON-compatible dict so that it
can be stored inside a checkpoint (``tokenizer.json`` in a run directory).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

from lmlab.errors import LmlabError, read_json_file

TOKENIZER_FILE = "lmlab-tokenizer.json"

_KINDS: dict[str, type["Tokenizer"]] = {}


def register_tokenizer(kind: str) -> Callable[[type["Tokenizer"]], type["Tokenizer"]]:
    """Class decorator: make ``cls`` loadable under ``kind``."""

    def decorate(cls: type["Tokenizer"]) -> type["Tokenizer"]:
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return decorate


class Tokenizer(ABC):
    """Text ↔ ids. Subclasses implement encode/decode, the vocabulary and (de)serialisation."""

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids this tokenizer can produce (the model's embedding rows)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text → ids. Raises :class:`LmlabError` for text the vocabulary cannot represent."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special tokens by role name (``pad``, ``eos``, ``bos``, ``unk``, ``mask``, ...) → id."""
        return {}

    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary entry, or None when it is not in the vocabulary."""
        return None

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of one id (for tables and attention views)."""
        return self.decode([token_id])

    def decode_visible(self, ids: Sequence[int]) -> str:
        """Ids → the text a reader sees: special tokens (EOS, end-of-turn, padding) left out."""
        special = set(self.special_tokens.values())
        return self.decode([i for i in ids if i not in special])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode several texts."""
        return [self.encode(text) for text in texts]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        """Decode several id sequences."""
        return [self.decode(ids) for ids in batch]

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible description from which :meth:`from_dict` rebuilds the tokenizer."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tokenizer":
        """Inverse of :meth:`to_dict`."""

    def save(self, directory: str | Path) -> Path:
        """Write ``lmlab-tokenizer.json`` into ``directory``; returns the file's path."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(tokenizer_to_json(self), ensure_ascii=False))
        return path


def tokenizer_to_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The stored form of any registered tokenizer: its kind plus its own data."""
    return {"kind": tokenizer.kind, "data": tokenizer.to_dict()}


def tokenizer_from_json(stored: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :func:`tokenizer_to_json`'s output."""
    kind = stored.get("kind")
    if kind not in _KINDS:
        raise LmlabError(
            f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}"
        )
    return _KINDS[kind].from_dict(stored["data"])


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved by :meth:`Tokenizer.save` in ``directory``."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise LmlabError(f"no tokenizer in {directory}: expected {TOKENIZER_FILE} there")
    return tokenizer_from_json(read_json_file(path, "re-save the tokenizer", dict))
