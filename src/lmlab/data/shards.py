"""Token shards: a corpus tokenised once into memory-mapped files, read back as training windows.

:func:`prepare_shards` streams the input (line by line, so a corpus larger than memory is
processed with flat memory), encodes it in batches through the tokenizer's ``encode_batch`` (the
Hugging Face tokenizers encode a batch in parallel; others fall back to one text at a time), and
appends the ids to shard files of at most ``shard_tokens`` tokens each. The output directory holds::

    index.json            dtype, vocab size, shards and their token counts, totals, source
    lmlab-tokenizer.json  the tokenizer (``Tokenizer.save``), so the ids can be decoded
    shard-00000.bin ...   raw ids, uint16 when vocab_size <= 65535, else uint32

A *document* is an input file (``documents="file"``, the default) or a non-blank line
(``documents="line"``: the line break is dropped); a ``.pgn`` / ``.pgn.zst`` file contributes its
games as one movetext line each. With ``doc_separator="eos"`` the tokenizer's EOS id is written
between documents. In file mode runs of whole lines (about 4 KB, line breaks kept) are encoded as
one text each, so for a lossless tokenizer (byte-level BPE, characters) decoding the shards gives
back the input exactly, EOS tokens between files. ``batch_docs`` texts (documents in line mode,
runs of lines in file mode) go to each ``encode_batch`` call.

:class:`ShardedTokens` memory-maps the shards read-only and reads windows across shard boundaries;
it is a token store, so :mod:`lmlab.data.windows` cuts it into training windows like a tensor.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from lmlab.data.corpora import KNOWN_CORPORA, load_corpus, local_files
from lmlab.data.readers import is_pgn_file, iter_pgn_games
from lmlab.errors import LmlabError, read_json_file
from lmlab.output_dir import claim_output_dir
from lmlab.tokenizers import Tokenizer, load_tokenizer

INDEX_FILE = "index.json"
INDEX_VERSION = 1
SHARD_PATTERN = "shard-{:05d}.bin"
SHARD_NAME = re.compile(r"shard-\d{5}\.bin")  # the only files a new run deletes as stale
SHARDS_KIND = "token-shards"  # the kind of output (see lmlab.output_dir) a shard directory is
DEFAULT_SHARD_TOKENS = 1 << 24
DEFAULT_BATCH_DOCS = 64  # ~256 KB of text per encode_batch call: memory stays flat, threads busy
UINT16_MAX_VOCAB = 65535
DOCUMENT_MODES = ("file", "line")
_MAX_PIECE_CHARS = 1 << 20  # a longer line is read (and encoded) in pieces of this many characters
_CHUNK_CHARS = 1 << 12  # file mode encodes runs of whole lines of about this many characters

Piece = tuple[str, bool]  # (text to encode, whether it starts a new document)


# ------------------------------------------------------------------------ the index
@dataclass(frozen=True)
class ShardFile:
    """One shard: its file name inside the shard directory and how many tokens it holds."""

    file: str
    tokens: int


@dataclass(frozen=True)
class ShardIndex:
    """What ``index.json`` records about a shard directory."""

    dtype: str
    vocab_size: int
    shards: tuple[ShardFile, ...]
    documents: int
    separator_id: int | None
    source: str
    source_bytes: int
    tokenizer_kind: str

    @property
    def total_tokens(self) -> int:
        """Tokens in all shards together."""
        return sum(shard.tokens for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to ``index.json``."""
        return {
            "version": INDEX_VERSION,
            "dtype": self.dtype,
            "vocab_size": self.vocab_size,
            "total_tokens": self.total_tokens,
            "documents": self.documents,
            "separator_id": self.separator_id,
            "source": self.source,
            "source_bytes": self.source_bytes,
            "tokenizer_kind": self.tokenizer_kind,
            "shards": [{"file": s.file, "tokens": s.tokens} for s in self.shards],
        }

    @classmethod
    def from_json(cls, data: Any, where: Path) -> "ShardIndex":
        """Inverse of :meth:`to_json`; a malformed index is an :class:`LmlabError`."""
        try:
            if data["version"] != INDEX_VERSION:
                raise LmlabError(
                    f"{where} has index version {data['version']!r}, expected {INDEX_VERSION}; "
                    "re-run 'lmlab data prepare'"
                )
            index = cls(
                dtype=data["dtype"],
                vocab_size=int(data["vocab_size"]),
                shards=tuple(ShardFile(str(s["file"]), int(s["tokens"])) for s in data["shards"]),
                documents=int(data["documents"]),
                separator_id=data["separator_id"],
                source=str(data["source"]),
                source_bytes=int(data["source_bytes"]),
                tokenizer_kind=str(data["tokenizer_kind"]),
            )
            total = int(data["total_tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LmlabError(
                f"{where} is not a valid shard index ({type(exc).__name__}: {exc}); "
                "re-run 'lmlab data prepare'"
            ) from None
        index._check(total, where)
        return index

    def _check(self, total: int, where: Path) -> None:
        if self.dtype not in ("uint16", "uint32"):
            raise LmlabError(f"{where}: unknown dtype {self.dtype!r}; re-run 'lmlab data prepare'")
        if self.separator_id is not None and not isinstance(self.separator_id, int):
            raise LmlabError(
                f"{where}: separator_id must be an integer or null; re-run 'lmlab data prepare'"
            )
        if total != self.total_tokens or any(s.tokens <= 0 for s in self.shards):
            raise LmlabError(
                f"{where}: total_tokens {total} does not match the shards' token counts; "
                "re-run 'lmlab data prepare'"
            )


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of the vocabulary fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.uint32)


# ------------------------------------------------------------------------ writing
def prepare_shards(
    tokenizer: Tokenizer,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    doc_separator: str | None = "eos",
    documents: str = "file",
    batch_docs: int = DEFAULT_BATCH_DOCS,
) -> ShardIndex:
    """Tokenise ``inputs`` into shards in ``out_dir``; returns the index written there.

    ``inputs`` is a corpus spec (a name from ``KNOWN_CORPORA``, a file, a directory or a glob)
    or a list of files / directories. ``batch_docs`` texts are encoded per ``encode_batch`` call.
    ``out_dir`` must be new, empty or a shard directory lmlab prepared (see :mod:`lmlab.output_dir`).
    """
    _check_prepare_args(shard_tokens, doc_separator, documents, batch_docs)
    separator = _separator_id(tokenizer, doc_separator)
    sources = _resolve_inputs(inputs)
    out = claim_output_dir(out_dir, SHARDS_KIND)
    (out / INDEX_FILE).unlink(missing_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writer = _ShardWriter(out, dtype, shard_tokens, tokenizer.vocab_size)
    pieces = _pieces(sources, documents)
    try:
        count = _encode_into(writer, tokenizer, pieces, separator, batch_docs)
    finally:
        shards = writer.close()
    if not shards:
        raise LmlabError(f"{_describe(inputs)} produced no tokens; point it at non-empty text")
    index = ShardIndex(
        dtype=dtype.name, vocab_size=tokenizer.vocab_size, shards=tuple(shards),
        documents=count, separator_id=separator, source=_describe(inputs),
        source_bytes=sum(_size(source) for source in sources), tokenizer_kind=tokenizer.kind,
    )
    tokenizer.save(out)
    _write_json_atomically(out / INDEX_FILE, index.to_json())
    return index


def _check_prepare_args(
    shard_tokens: int, doc_separator: str | None, documents: str, batch_docs: int
) -> None:
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise LmlabError(f"shard_tokens must be a positive integer, got {shard_tokens!r}")
    if not isinstance(batch_docs, int) or batch_docs < 1:
        raise LmlabError(f"batch_docs must be a positive integer, got {batch_docs!r}")
    if doc_separator not in ("eos", None):
        raise LmlabError(f"doc_separator must be 'eos' or None, got {doc_separator!r}")
    if documents not in DOCUMENT_MODES:
        raise LmlabError(
            f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {documents!r}"
        )


def _separator_id(tokenizer: Tokenizer, doc_separator: str | None) -> int | None:
    if doc_separator is None:
        return None
    eos = tokenizer.special_tokens.get("eos")
    if eos is None:
        raise LmlabError(
            f"the {tokenizer.kind} tokenizer has no eos token to separate documents; "
            "prepare without a separator (doc_separator=None, --separator none)"
        )
    return eos


def _encode_into(
    writer: "_ShardWriter",
    tokenizer: Tokenizer,
    pieces: Iterator[Piece],
    separator: int | None,
    batch_docs: int,
) -> int:
    """Encode the pieces batch by batch into ``writer``; returns the number of documents."""
    documents = 0
    while batch := list(islice(pieces, batch_docs)):
        encoded = tokenizer.encode_batch([text for text, _ in batch])
        parts: list[Iterable[int]] = []
        for ids, (_, starts_document) in zip(encoded, batch):
            if starts_document:
                if separator is not None and documents > 0:
                    parts.append((separator,))
                documents += 1
            parts.append(ids)
        writer.write(np.fromiter(chain.from_iterable(parts), dtype=np.int64))
    return documents


class _ShardWriter:
    """Appends ids to shard files, starting a new file every ``shard_tokens`` tokens."""

    def __init__(self, out: Path, dtype: np.dtype, shard_tokens: int, vocab_size: int):
        self.out = out
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.vocab_size = vocab_size
        self.shards: list[ShardFile] = []
        self.handle = None
        self.filled = 0

    def write(self, ids: np.ndarray) -> None:
        """Append ids (N,) to the shards, splitting them across files as needed."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise LmlabError(
                f"the tokenizer produced ids outside its vocabulary 0..{self.vocab_size - 1}; "
                "its vocab_size is wrong, fix or re-save the tokenizer"
            )
        ids = ids.astype(self.dtype)
        while ids.size:
            if self.handle is None or self.filled == self.shard_tokens:
                self._next_shard()
            take = min(ids.size, self.shard_tokens - self.filled)
            self.handle.write(ids[:take].tobytes())
            self.filled += take
            ids = ids[take:]

    def _next_shard(self) -> None:
        self._finish_shard()
        name = SHARD_PATTERN.format(len(self.shards))
        self.handle = open(self.out / name, "wb")
        self.shards.append(ShardFile(name, 0))
        self.filled = 0

    def _finish_shard(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.shards[-1] = ShardFile(self.shards[-1].file, self.filled)

    def close(self) -> list[ShardFile]:
        """Close the last shard, delete stale shards of an earlier run; returns the shards."""
        self._finish_shard()
        self.handle = None
        kept = {shard.file for shard in self.shards}
        for stale in self.out.glob("shard-*.bin"):
            if stale.name not in kept and SHARD_NAME.fullmatch(stale.name):
                stale.unlink()
        return self.shards


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------ reading the input
def _resolve_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path | str]:
    """Input files in order, or for a named corpus its text (small enough to load in memory)."""
    if isinstance(inputs, (str, Path)):
        if str(inputs) in KNOWN_CORPORA:
            return [load_corpus(str(inputs))]
        files = local_files(str(inputs))
    else:
        files = [file for item in inputs for file in local_files(str(item))]
    if not files:
        raise LmlabError(f"{_describe(inputs)} contains no files; point it at text files")
    return files


def _pieces(sources: list[Path | str], documents: str) -> Iterator[Piece]:
    """The texts to encode, in order, each flagged when it starts a document."""
    for source in sources:
        if isinstance(source, str):
            lines = iter(source.splitlines(keepends=True))
        elif is_pgn_file(source):
            lines = (game.movetext + "\n" for game in iter_pgn_games(source))
        else:
            lines = _read_lines(source)
        yield from _line_documents(lines) if documents == "line" else _file_document(lines)


def _read_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file with their line breaks, read lazily (long lines in pieces)."""
    with open(path, encoding="utf-8", newline="") as handle:
        try:
            yield from iter(lambda: handle.readline(_MAX_PIECE_CHARS), "")
        except UnicodeDecodeError as exc:
            raise LmlabError(
                f"{path} is not UTF-8 text (bad byte at offset {exc.start}); "
                "convert it to UTF-8 or leave it out"
            ) from None


def _file_document(lines: Iterator[str]) -> Iterator[Piece]:
    """All lines as one document, in pieces of whole lines of about ``_CHUNK_CHARS`` characters."""
    chunk: list[str] = []
    size = 0
    first = True
    for line in lines:
        chunk.append(line)
        size += len(line)
        if size >= _CHUNK_CHARS:
            yield "".join(chunk), first
            chunk, size, first = [], 0, False
    if chunk:
        yield "".join(chunk), first


def _line_documents(lines: Iterator[str]) -> Iterator[Piece]:
    """Each non-blank line as one document, without its line break."""
    continues = False  # the previous piece was a long line's part that did not end the line
    for line in lines:
        text = line.rstrip("\r\n")
        if text or continues:
            yield text, not continues
        continues = len(text) == len(line)


def _size(source: Path | str) -> int:
    """Bytes of an input file, or of a loaded corpus's text."""
    return os.path.getsize(source) if isinstance(source, Path) else len(source.encode("utf-8"))


def _describe(inputs: str | Path | Sequence[str | Path]) -> str:
    if isinstance(inputs, (str, Path)):
        return str(inputs)
    names = [str(item) for item in inputs]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


# ------------------------------------------------------------------------ reading the shards
_CHECK_CHUNK_TOKENS = 1 << 24
class ShardedTokens:
    """The tokens of a shard directory as one read-only sequence (a token store for
    :mod:`lmlab.data.windows`: ``len()`` and :meth:`window`)."""

    def __init__(self, directory: Path, index: ShardIndex):
        self.directory = directory
        self.index = index
        self.dtype = np.dtype(index.dtype)
        self._starts = np.cumsum([0] + [s.tokens for s in index.shards])  # (S+1,)
        self._maps: list[np.memmap | None] = [None] * len(index.shards)

    @classmethod
    def open(cls, directory: str | Path) -> "ShardedTokens":
        """Open the shards written by :func:`prepare_shards`, checking the index and file sizes."""
        directory = Path(directory)
        index = ShardIndex.from_json(_read_index(directory / INDEX_FILE), directory / INDEX_FILE)
        itemsize = np.dtype(index.dtype).itemsize
        for shard in index.shards:
            _check_shard_file(directory / shard.file, shard.tokens * itemsize)
        return cls(directory, index)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the shards."""
        return load_tokenizer(self.directory)

    def check_ids_below(self, vocab_size: int) -> None:
        """Raise :class:`LmlabError` naming the first shard that holds an id a model of
        ``vocab_size`` ids cannot embed (read shard by shard, in chunks: memory stays bounded)."""
        for number, shard in enumerate(self.index.shards):
            tokens = self._shard(number)
            for start in range(0, shard.tokens, _CHECK_CHUNK_TOKENS):
                largest = int(tokens[start : start + _CHECK_CHUNK_TOKENS].max())
                if largest >= vocab_size:
                    raise LmlabError(
                        f"shard {self.directory / shard.file} holds token id {largest} but the model's "
                        f"vocabulary has {vocab_size} ids; prepare the shards with the run's tokenizer "
                        "('lmlab data prepare --tokenizer ...')"
                    )

    def window(self, start: int, length: int) -> torch.Tensor:
        """Tokens ``start`` … ``start + length - 1`` as a (length,) int64 tensor."""
        if start < 0 or length < 0 or start + length > len(self):
            raise LmlabError(
                f"window [{start}, {start + length}) is outside the {len(self)} tokens of "
                f"{self.directory}"
            )
        return torch.from_numpy(self._read(start, start + length).astype(np.int64))

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) gathered from the shards that hold them."""
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        while start < stop:
            offset = int(self._starts[shard])
            end = min(stop, int(self._starts[shard + 1]))
            parts.append(self._shard(shard)[start - offset : end - offset])
            start, shard = end, shard + 1
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def _shard(self, number: int) -> np.memmap:
        """Shard ``number``, memory-mapped on first use."""
        mapped = self._maps[number]
        if mapped is None:
            shard = self.index.shards[number]
            mapped = np.memmap(
                self.directory / shard.file, dtype=self.dtype, mode="r", shape=(shard.tokens,)
            )
            self._maps[number] = mapped
        return mapped


def _read_index(path: Path) -> Any:
    if not path.is_file():
        raise LmlabError(
            f"no {INDEX_FILE} in {path.parent}; prepare the shards with 'lmlab data prepare'"
        )
    return read_json_file(path, "re-run 'lmlab data prepare'")


def _check_shard_file(path: Path, expected_bytes: int) -> None:
    if not path.is_file():
        raise LmlabError(f"shard {path} is missing; re-run 'lmlab data prepare'")
    actual = path.stat().st_size
    if actual != expected_bytes:
        raise LmlabError(
            f"shard {path} has {actual} bytes but the index expects {expected_bytes}; "
            "the shards are truncated or stale, re-run 'lmlab data prepare'"
        )
