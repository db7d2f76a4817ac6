"""The one way to load a tokenizer someone else made: :func:`load_pretrained_tokenizer`.

It takes a built-in name (``chess-pgn``), a directory saved by :meth:`Tokenizer.save`
(``lmlab-tokenizer.json``, or that file), a Hugging Face ``tokenizer.json`` file, or a Hugging Face
model directory, whose formats :mod:`lmlab.tokenizers.hf_directory` reads. The tokenizer a GGUF
file describes comes from its metadata (:mod:`lmlab.tokenizers.gguf_vocab`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import TOKENIZER_FILE, Tokenizer, load_tokenizer
from lmlab.tokenizers.chess_pgn import ChessPGNTokenizer
from lmlab.tokenizers.hf import HFTokenizer
from lmlab.tokenizers.hf_directory import read_hf_directory

BUILT_IN: dict[str, Callable[[], Tokenizer]] = {
    "chess-pgn": ChessPGNTokenizer,
}


def load_pretrained_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer called ``name_or_path`` (a built-in name) or stored there (a saved lmlab
    tokenizer, a ``tokenizer.json`` file, or a Hugging Face model directory)."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]()
    path = Path(name_or_path)
    if (path / TOKENIZER_FILE).is_file():
        return load_tokenizer(path)
    if path.is_file() and path.name == TOKENIZER_FILE:
        return load_tokenizer(path.parent)
    if path.is_file():
        return HFTokenizer.from_file(path)
    if path.is_dir():
        return read_hf_directory(path)
    raise LmlabError(
        f"tokenizer {str(name_or_path)!r} does not exist: it is neither a built-in name "
        f"({', '.join(sorted(BUILT_IN))}) nor a tokenizer file or directory; pass one of those"
    )
