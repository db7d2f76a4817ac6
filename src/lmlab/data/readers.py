"""Readers for task data files: text pairs, labelled texts and chess games.

* :func:`read_text_pairs` — (source, target) pairs for translation or summarisation, from TSV,
  CSV or JSONL, with configurable column / field names.
* :func:`read_labelled_texts` — texts with class labels for classification; label names map to
  ids in a stable order (the order given, else sorted, numerically when every label is a number).
* :func:`iter_pgn_games` — games from ``.pgn`` or ``.pgn.zst`` files, parsed with python-chess,
  as canonical one-line movetext that :class:`~lmlab.tokenizers.ChessPGNTokenizer` round-trips.

The format comes from the file suffix (``.tsv``, ``.csv``, ``.jsonl``/``.ndjson``) unless given.
Tabular files have a header row by default; without one (``header=False``) columns are named by
their 0-based index. Every problem (missing file or column, malformed JSON line, empty file) is
an :class:`~lmlab.errors.LmlabError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple, Sequence

from lmlab.errors import LmlabError, require_optional

TABLE_FORMATS = ("tsv", "csv", "jsonl")
_SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_PGN_EXPORT = {"headers": False, "variations": False, "comments": False}

Column = str | int


class TextPair(NamedTuple):
    """One example of a sequence-to-sequence task."""

    source: str
    target: str


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels; ``label_names[i]`` is the name of label id ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    @property
    def label_to_id(self) -> dict[str, int]:
        """Label name → id."""
        return {name: i for i, name in enumerate(self.label_names)}

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class PGNGame:
    """One chess game: its movetext on one line (result last) and, if kept, its PGN headers."""

    movetext: str
    headers: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------ pairs and labels
def read_text_pairs(
    path: str | Path,
    source: Column = "source",
    target: Column = "target",
    *,
    format: str | None = None,
    header: bool = True,
) -> list[TextPair]:
    """(source, target) pairs from a TSV, CSV or JSONL file.

    ``source`` and ``target`` name the columns (header row) or JSON fields; with
    ``header=False`` they are 0-based column indices (defaults then become 0 and 1).
    """
    if not header:
        source, target = _positional(source, "source", 0), _positional(target, "target", 1)
    pairs = [
        TextPair(_text(record, source, line, path), _text(record, target, line, path))
        for line, record in _records(Path(path), format, header)
    ]
    return _non_empty(pairs, path)


def read_labelled_texts(
    path: str | Path,
    text: Column = "text",
    label: Column = "label",
    *,
    format: str | None = None,
    header: bool = True,
    label_names: Sequence[str] | None = None,
) -> LabelledTexts:
    """Texts and labels from a TSV, CSV or JSONL file, labels mapped to ids.

    With ``label_names`` the ids follow that order and any other label is an error (pass the
    training split's ``label_names`` when reading its validation split); without it the labels
    found are sorted (numerically when all are integers).
    """
    if not header:
        text, label = _positional(text, "text", 0), _positional(label, "label", 1)
    rows = [
        (_text(record, text, line, path), _label(record, label, line, path), line)
        for line, record in _records(Path(path), format, header)
    ]
    _non_empty(rows, path)
    names = list(label_names) if label_names is not None else _sorted_labels({r[1] for r in rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = [(name, line) for _, name, line in rows if name not in index]
    if unknown:
        name, line = unknown[0]
        raise LmlabError(
            f"{path}, line {line}: label {name!r} is not one of the label names {names}; "
            "add it to label_names or fix the file"
        )
    return LabelledTexts([r[0] for r in rows], [index[r[1]] for r in rows], names)


def _positional(column: Column, default_name: str, default_index: int) -> Column:
    """A column of a headerless table: its index (a digit string counts; the default name
    means the default position)."""
    if column == default_name:
        return default_index
    return int(column) if isinstance(column, str) and column.isdigit() else column


def _sorted_labels(names: set[str]) -> list[str]:
    """Label names in a stable order: numerically if all are integers, else alphabetically."""
    if all(_is_int(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _non_empty(rows: list, path: str | Path) -> list:
    if not rows:
        raise LmlabError(f"{path} holds no examples; point it at a file with data rows")
    return rows


# ------------------------------------------------------------------------ records
def table_format(path: Path, format: str | None) -> str:
    """The table format to read ``path`` as: ``format`` if given, else from the suffix."""
    chosen = format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if chosen not in TABLE_FORMATS:
        raise LmlabError(
            f"cannot tell the format of {path} (suffix {path.suffix!r}); name the file .tsv, "
            f".csv or .jsonl or pass format= one of {', '.join(TABLE_FORMATS)}"
        )
    return chosen


def _records(path: Path, format: str | None, header: bool) -> Iterator[tuple[int, dict]]:
    """(1-based line number, record) for each data row; a record maps column → value."""
    chosen = table_format(path, format)
    with _open_text(path) as handle:
        if chosen == "jsonl":
            yield from _json_records(handle, path)
        else:
            yield from _table_records(handle, path, "\t" if chosen == "tsv" else ",", header)


def _open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise LmlabError(f"no such file: {path}; check the path")
    if path.stat().st_size == 0:
        raise LmlabError(f"{path} is empty; point it at a file with data")
    return open(path, encoding="utf-8-sig", newline="")  # -sig: skip a byte-order mark


def _json_records(handle: IO[str], path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(_utf8_lines(handle, path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LmlabError(
                f"{path}, line {number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                "each line must hold one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise LmlabError(
                f"{path}, line {number}: expected a JSON object, got {type(record).__name__}; "
                "each line must hold one JSON object"
            )
        yield number, record


def _table_records(
    handle: IO[str], path: Path, delimiter: str, header: bool
) -> Iterator[tuple[int, dict]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    lines = _utf8_lines(handle, path)
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=True)
    names: list[str] | None = None
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header and names is None:
                names = row
                continue
            yield reader.line_num, _row_record(row, names, reader.line_num, path)
    except csv.Error as exc:
        raise LmlabError(f"{path}, line {reader.line_num}: malformed row ({exc})") from None


def _row_record(row: list[str], names: list[str] | None, line: int, path: Path) -> dict:
    if names is None:
        return dict(enumerate(row))
    if len(row) != len(names):
        raise LmlabError(
            f"{path}, line {line}: {len(row)} columns but the header has {len(names)}; "
            "check the delimiter and quoting"
        )
    return dict(zip(names, row))


def _utf8_lines(handle: IO[str], path: Path) -> Iterator[str]:
    try:
        yield from handle
    except UnicodeDecodeError as exc:
        raise LmlabError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}); convert it to UTF-8"
        ) from None


def _value(record: dict, column: Column, line: int, path: str | Path) -> Any:
    if isinstance(column, str) and column not in record and all(isinstance(k, int) for k in record):
        raise LmlabError(
            f"{path}: without a header row, name columns by 0-based index, not {column!r}"
        )
    if column not in record:
        available = ", ".join(repr(k) for k in record)
        raise LmlabError(
            f"{path}, line {line}: no column {column!r} (available: {available}); "
            "pass the right column name or index"
        )
    return record[column]


def _text(record: dict, column: Column, line: int, path: str | Path) -> str:
    value = _value(record, column, line, path)
    if not isinstance(value, str):
        raise LmlabError(
            f"{path}, line {line}: {column!r} must be text, got {type(value).__name__}"
        )
    return value


def _label(record: dict, column: Column, line: int, path: str | Path) -> str:
    value = _value(record, column, line, path)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LmlabError(
            f"{path}, line {line}: label {column!r} must be a string or an integer, "
            f"got {type(value).__name__}"
        )
    return str(value)


# ------------------------------------------------------------------------ chess games
def iter_pgn_games(path: str | Path, keep_headers: bool = False) -> Iterator[PGNGame]:
    """The games of a ``.pgn`` or ``.pgn.zst`` file, streamed, as :class:`PGNGame`.

    Movetext is the main line without comments, NAGs or variations, on one line with single
    spaces and the result last (``"1. e4 e5 2. Nf3 Nc6 1-0"``). Headers are dropped unless
    ``keep_headers`` (a game set up from a ``FEN`` header needs them to be replayed). A game
    python-chess cannot parse (illegal move, bad SAN) is an error.
    """
    chess_pgn = _import_chess_pgn()
    path = Path(path)
    with open_pgn(path) as handle:
        number = 0
        while (game := _read_game(chess_pgn, handle, path, number + 1)) is not None:
            number += 1
            if game.errors:
                raise LmlabError(
                    f"{path}, game {number}: {_first_line(game.errors[0])}; fix or remove the game"
                )
            exporter = chess_pgn.StringExporter(**_PGN_EXPORT)
            movetext = " ".join(game.accept(exporter).split())
            yield PGNGame(movetext, dict(game.headers) if keep_headers else {})
    if number == 0:
        raise LmlabError(f"{path} holds no chess games; point it at a PGN file")


def _read_game(chess_pgn: Any, handle: IO[str], path: Path, number: int) -> Any:
    try:
        return chess_pgn.read_game(handle)
    except UnicodeDecodeError as exc:
        raise LmlabError(
            f"{path}, game {number}: not UTF-8 text (bad byte at offset {exc.start}); "
            "convert the file to UTF-8"
        ) from None


def open_pgn(path: Path) -> IO[str]:
    """A text stream over a ``.pgn`` file or a ``.pgn.zst`` file decompressed on the fly."""
    if not path.is_file():
        raise LmlabError(f"no such file: {path}; check the path")
    if path.name.lower().endswith(".pgn"):
        return open(path, encoding="utf-8")
    if path.name.lower().endswith(".pgn.zst"):
        zstandard = require_optional("zstandard", "chess", "reading .pgn.zst files")
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(raw, encoding="utf-8")
    raise LmlabError(f"{path} is not a chess game file; expected a .pgn or .pgn.zst file")


def is_pgn_file(path: str | Path) -> bool:
    """Whether ``path`` names a ``.pgn`` or ``.pgn.zst`` file."""
    return str(path).lower().endswith((".pgn", ".pgn.zst"))


def _import_chess_pgn() -> Any:
    chess = require_optional("chess", "chess", "reading chess games")
    import chess.pgn  # noqa: F401  (the submodule is not imported by ``import chess``)

    return chess.pgn


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
