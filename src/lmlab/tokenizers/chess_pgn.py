"""Chess movetext tokenizer: a fixed vocabulary for standard-algebraic-notation (SAN) games.

The vocabulary is built from the grammar of PGN movetext, not learned, so ids are the same
everywhere. In id order (402 tokens with the default ``max_move_number=300``):

====================  ======================================================  =====
group                 tokens                                                  count
====================  ======================================================  =====
special               ``<pad>`` ``<s>`` (bos) ``</s>`` (eos, game separator)      3
squares               ``a1`` ``b1`` … ``h1`` ``a2`` … ``h8`` (destination)       64
pieces                ``N`` ``B`` ``R`` ``Q`` ``K``                                5
disambiguation files  ``a`` … ``h`` (also the pawn's file in ``exd5``)             8
disambiguation ranks  ``1`` … ``8``                                                8
marks                 ``x`` ``+`` ``#`` ``=Q`` ``=R`` ``=B`` ``=N``                7
castling              ``O-O`` ``O-O-O``                                            2
results               ``1-0`` ``0-1`` ``1/2-1/2`` ``*``                            4
black continuation    ``..`` (written after a move number: ``12...``)              1
move numbers          ``1.`` … ``300.``                                          300
====================  ======================================================  =====

A SAN move is split into its parts: ``Nbd7`` → ``N b d7``, ``R1xe2`` → ``R 1 x e2``,
``Qh4e1`` → ``Q h 4 e1``, ``exd8=N+`` → ``e x d8 =N +``, ``O-O-O#`` → ``O-O-O #``. A destination is
always a square token and a disambiguation always file/rank tokens, so move boundaries can be
recovered from the ids alone.

Text layout: one game per line. Within a line, words (moves, move numbers, results) are separated
by exactly one space; each newline is one ``</s>`` token. :meth:`decode` writes a single space
between words, no space inside a move, and a newline for ``</s>`` — so every text :meth:`encode`
accepts satisfies ``decode(encode(text)) == text``, e.g. ``"1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0"`` or
several such lines joined by ``"\\n"``. Any other spacing (two spaces, a tab, a ``\\r``, a space at
the start or end of a line) is an error naming its position, never silently normalised. The
literal words ``<pad>``, ``<s>`` and ``</s>`` are accepted too (``</s>`` decodes to a newline).
There is no unknown token: comments, NAGs, annotations (``!?``), variations, headers or any other
word is an error naming the word and its position.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from lmlab.errors import LmlabError
from lmlab.tokenizers.base import Tokenizer, register_tokenizer

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
SQUARES = tuple(file + rank for rank in "12345678" for file in "abcdefgh")
PIECES = ("N", "B", "R", "Q", "K")
FILES = tuple("abcdefgh")
RANKS = tuple("12345678")
CAPTURE = "x"
MARKS = (CAPTURE, "+", "#", "=Q", "=R", "=B", "=N")
CASTLES = ("O-O", "O-O-O")
RESULTS = ("1-0", "0-1", "1/2-1/2", "*")
BLACK_CONTINUATION = ".."
DEFAULT_MAX_MOVE_NUMBER = 300
VERSION = 1

_WORD = re.compile(r"\n|[^\s]+")
# Spacing that decode could not reproduce: a run of two or more blanks, a blank other than a space
# (tab, carriage return, form feed, non-breaking space, ...), or a space at a line's start or end.
_UNREPRODUCIBLE_SPACING = re.compile(r"[^\S\n]{2,}|[^\S \n]|^ | $", re.MULTILINE)
_SAN = re.compile(r"([NBRQK])?([a-h])?([1-8])?(x)?([a-h][1-8])(=[QRBN])?([+#])?")
_CASTLE = re.compile(r"(O-O-O|O-O)([+#])?")
_MOVE_NUMBER = re.compile(r"([1-9][0-9]*\.)(\.\.)?")

# Decoding: which tokens are written directly after the previous token instead of after a space.
_ALWAYS_JOINED = frozenset(RANKS + MARKS + (BLACK_CONTINUATION,))
_BEFORE_FILE = frozenset(PIECES)
_BEFORE_SQUARE = frozenset(PIECES + FILES + RANKS + (CAPTURE,))
_SQUARE_SET = frozenset(SQUARES)
_FILE_SET = frozenset(FILES)


def _joined(token: str, previous: str) -> bool:
    """Whether ``token`` continues the word that ``previous`` belongs to."""
    if token in _ALWAYS_JOINED:
        return True
    if token in _SQUARE_SET:
        return previous in _BEFORE_SQUARE
    if token in _FILE_SET:
        return previous in _BEFORE_FILE
    return False


def _san_tokens(word: str) -> tuple[str, ...] | None:
    """The tokens of one SAN move (not castling), or None when ``word`` is not one."""
    match = _SAN.fullmatch(word)
    if match is None:
        return None
    piece, file, rank, capture, _, promotion, _ = match.groups()
    if piece is None and (rank is not None or (file is None) != (capture is None)):
        return None  # a pawn names its file exactly when it captures, and never its rank
    if piece is not None and promotion is not None:
        return None
    return tuple(part for part in match.groups() if part is not None)


def word_tokens(word: str) -> tuple[str, ...] | None:
    """Split one whitespace-free word of movetext into token strings; None when it is not valid."""
    if word in SPECIAL_TOKENS or word in RESULTS:
        return (word,)
    for pattern in (_MOVE_NUMBER, _CASTLE):
        match = pattern.fullmatch(word)
        if match is not None:
            return tuple(part for part in match.groups() if part is not None)
    return _san_tokens(word)


def _problem(word: str) -> str:
    """Why ``word`` is not movetext, with a hint for the usual PGN extras."""
    if word[0] in "{};":
        return "comments are not in the chess vocabulary; export the movetext without comments"
    if word[0] == "$":
        return "NAGs ($n) are not in the chess vocabulary; export the movetext without them"
    if word[0] in "()":
        return "variations are not in the chess vocabulary; export the main line only"
    if word[0] in '["':
        return "PGN headers are not in the chess vocabulary; pass the movetext only"
    if "!" in word or "?" in word:
        return "move annotations (!, ?) are not in the chess vocabulary; strip them"
    return (
        "expected a SAN move (e4, Nbd7, exd8=Q+, O-O), a move number (12. or 12...), "
        "a result (1-0, 0-1, 1/2-1/2, *) or <pad>/<s>/</s>, with spaces between words"
    )


def _where(text: str, position: int) -> str:
    """Line, column and offset of ``position`` in ``text`` (all 1-based but the offset)."""
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line}, column {column} (character {position})"


def _check_spacing(text: str) -> None:
    """Raise unless every line of ``text`` is words joined by single spaces (what decode writes)."""
    bad = _UNREPRODUCIBLE_SPACING.search(text)
    if bad is not None:
        raise LmlabError(
            f"unexpected spacing {bad.group()!r} at {_where(text, bad.start())}: the chess vocabulary "
            "round-trips words joined by single spaces, one game per line ending in \\n; "
            "normalise the whitespace (e.g. ' '.join(line.split()))"
        )


@register_tokenizer("chess-pgn")
class ChessPGNTokenizer(Tokenizer):
    """SAN movetext ↔ ids over the fixed chess vocabulary described in this module's docstring.

    ``max_move_number`` sets how many move-number tokens (``1.`` … ``N.``) the vocabulary holds;
    they come last, so tokenizers with different maxima agree on every other id.
    """

    def __init__(self, max_move_number: int = DEFAULT_MAX_MOVE_NUMBER):
        if not isinstance(max_move_number, int) or max_move_number < 1:
            raise LmlabError(f"max_move_number must be a positive integer, got {max_move_number!r}")
        self.max_move_number = max_move_number
        numbers = tuple(f"{n}." for n in range(1, max_move_number + 1))
        self.vocab: tuple[str, ...] = (
            SPECIAL_TOKENS + SQUARES + PIECES + FILES + RANKS + MARKS + CASTLES + RESULTS
            + (BLACK_CONTINUATION,) + numbers
        )
        self._index = {token: i for i, token in enumerate(self.vocab)}
        self._eos = self._index[EOS]
        self._word_ids: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"pad": self._index[PAD], "bos": self._index[BOS], "eos": self._eos}

    def encode(self, text: str) -> list[int]:
        """Movetext → ids; one ``</s>`` per newline. Raises for anything outside the grammar."""
        _check_spacing(text)
        ids: list[int] = []
        for match in _WORD.finditer(text):
            word = match.group()
            if word == "\n":
                ids.append(self._eos)
            else:
                ids.extend(self._ids_of_word(word, text, match.start()))
        return ids

    def _ids_of_word(self, word: str, text: str, position: int) -> tuple[int, ...]:
        """Ids of one word, cached (valid words only, so the cache is bounded by the grammar)."""
        cached = self._word_ids.get(word)
        if cached is not None:
            return cached
        tokens = word_tokens(word)
        if tokens is None:
            where = _where(text, position)
            raise LmlabError(f"cannot tokenize {word!r} at {where}: {_problem(word)}")
        if tokens[0] not in self._index:
            raise LmlabError(
                f"move number {tokens[0]!r} at {_where(text, position)} is above this tokenizer's "
                f"maximum {self.max_move_number}; build it with a larger max_move_number"
            )
        ids = tuple(self._index[token] for token in tokens)
        self._word_ids[word] = ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → movetext: spaces between words, none inside a move, a newline for ``</s>``."""
        parts: list[str] = []
        previous: str | None = None
        for token_id in ids:
            token = self.id_to_token(token_id)
            if token == EOS:
                parts.append("\n")
                previous = None
                continue
            if previous is not None and not _joined(token, previous):
                parts.append(" ")
            parts.append(token)
            previous = token
        return "".join(parts)

    def token_to_id(self, token: str) -> int | None:
        return self._index.get(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.vocab):
            raise LmlabError(
                f"id {token_id} is outside the chess vocabulary (size {len(self.vocab)})"
            )
        return self.vocab[token_id]

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "max_move_number": self.max_move_number}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChessPGNTokenizer":
        version = data.get("version")
        if version != VERSION:
            raise LmlabError(
                f"chess tokenizer version {version!r} is not supported (expected {VERSION}); "
                "upgrade lmlab or re-save the tokenizer"
            )
        return cls(max_move_number=data.get("max_move_number", DEFAULT_MAX_MOVE_NUMBER))
