"""The one way to load a tokenizer someone else made: :func:`load_pretrained_tokenizer`.

It takes a built-in name (``chess-pgn``), a directory saved by :meth:`Tokenizer.save`
(``lmlab-tokenizer.json``, or that file), a Hugging Face model directory or one of its tokenizer
files (``tokenizer.json``, ``vocab.txt``, ``vocab.json`` / ``merges.txt``, a SentencePiece
``.model``), whose formats :mod:`lmlab.tokenizers.hf_directory` reads, or a GGUF file, whose
metadata :mod:`lmlab.tokenizers.gguf_vocab` reads. Hub model ids are fetched to a local directory
first, by :func:`lmlab.interop.hub.resolve_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import TOKENIZER_FILE, Tokenizer, load_tokenizer
from lmlab.tokenizers.chess_pgn import ChessPGNTokenizer
from lmlab.tokenizers.gguf_vocab import tokenizer_from_gguf_file
from lmlab.tokenizers.hf_directory import read_hf_directory, read_hf_file

GGUF_SUFFIX = ".gguf"
BUILT_IN: dict[str, Callable[[], Tokenizer]] = {
    "chess-pgn": ChessPGNTokenizer,
}


def load_pretrained_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer called ``name_or_path`` (a built-in name) or stored there (a saved lmlab
    tokenizer, a Hugging Face model directory or tokenizer file, or a GGUF file)."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]()
    path = Path(name_or_path).expanduser()
    if (path / TOKENIZER_FILE).is_file():
        return load_tokenizer(path)
    if path.is_file() and path.name == TOKENIZER_FILE:
        return load_tokenizer(path.parent)
    if path.is_file() and path.suffix == GGUF_SUFFIX:
        return tokenizer_from_gguf_file(path)
    if path.is_file():
        return read_hf_file(path)
    if path.is_dir():
        return read_hf_directory(path)
    raise LmlabError(
        f"tokenizer {str(name_or_path)!r} does not exist: it is neither a built-in name "
        f"({', '.join(sorted(BUILT_IN))}) nor a tokenizer file or directory; pass one of those"
    )
