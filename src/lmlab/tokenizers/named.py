"""Tokenizers by name: built-in fixed vocabularies, saved lmlab tokenizers, HF ``tokenizer.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import TOKENIZER_FILE, Tokenizer, load_tokenizer
from lmlab.tokenizers.chess_pgn import ChessPGNTokenizer
from lmlab.tokenizers.hf import HF_TOKENIZER_FILE, HFTokenizer

_NAMED: dict[str, Callable[[], Tokenizer]] = {
    "chess-pgn": ChessPGNTokenizer,
}


def named_tokenizers() -> list[str]:
    """Names accepted by :func:`get_named_tokenizer`."""
    return sorted(_NAMED)


def get_named_tokenizer(name: str) -> Tokenizer:
    """The built-in tokenizer called ``name`` (e.g. ``"chess-pgn"``)."""
    if name not in _NAMED:
        raise LmlabError(
            f"unknown tokenizer name {name!r}; known names: {', '.join(named_tokenizers())}"
        )
    return _NAMED[name]()


def resolve_tokenizer(name_or_dir: str | Path) -> Tokenizer:
    """A tokenizer from a built-in name, a directory saved by :meth:`Tokenizer.save`
    (``lmlab-tokenizer.json``), or a Hugging Face ``tokenizer.json`` (the file or its directory).
    """
    if str(name_or_dir) in _NAMED:
        return _NAMED[str(name_or_dir)]()
    path = Path(name_or_dir)
    if (path / TOKENIZER_FILE).is_file():
        return load_tokenizer(path)
    if path.is_file() and path.name == TOKENIZER_FILE:
        return load_tokenizer(path.parent)
    if (path / HF_TOKENIZER_FILE).is_file() or path.is_file():
        return HFTokenizer.from_file(path)
    raise LmlabError(
        f"cannot find tokenizer {str(name_or_dir)!r}: it is not a built-in name "
        f"({', '.join(named_tokenizers())}) nor a directory holding {TOKENIZER_FILE} or "
        f"{HF_TOKENIZER_FILE}"
    )
