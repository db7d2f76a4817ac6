"""Text ↔ ids: character, byte-level BPE, WordPiece and chess PGN tokenizers behind one interface."""

from lmlab.tokenizers.base import (
    TOKENIZER_FILE,
    Tokenizer,
    load_tokenizer,
    register_tokenizer,
    registered_kinds,
    tokenizer_from_json,
    tokenizer_to_json,
)
from lmlab.tokenizers.char import CharTokenizer

__all__ = [
    "TOKENIZER_FILE",
    "CharTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "register_tokenizer",
    "registered_kinds",
    "tokenizer_from_json",
    "tokenizer_to_json",
]
