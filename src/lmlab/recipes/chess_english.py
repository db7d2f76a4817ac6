"""Chess moves as English sentences, and back: the chess recipe's second notation.

:func:`describe_move` writes one move deterministically from the board before it:

* ``White moves pawn to e4`` — a move to an empty square;
* ``Black knight takes on f6`` — a capture (en passant too, on the square the pawn lands on);
* ``White moves knight from b1 to d2`` — ``from`` only when another piece of the same kind could
  also go there (SAN's disambiguation, always with the whole square);
* ``Black castles kingside`` / ``White castles queenside``;
* ``White moves pawn to e8 and promotes to queen``;
* ``, check`` or ``, checkmate`` at the end when the move gives one.

A game is one line: its moves as sentences, each followed by ``". "``, then the result
(``White wins.``, ``Black wins.``, ``Draw.`` or ``Unfinished.``). :func:`parse_description` is the
inverse: a sentence and the board → the legal move it names, or None. Like python-chess's
``parse_san`` it ignores what follows from the move itself (``moves`` versus ``takes``, the check
suffix, a ``from`` that was not needed) and rejects a sentence naming the wrong side, no legal move
or more than one.
"""

from __future__ import annotations

import re
from typing import Iterable

import chess

SENTENCE_END = ". "
RESULT_SENTENCES = {"1-0": "White wins.", "0-1": "Black wins.", "1/2-1/2": "Draw.", "*": "Unfinished."}
PIECE_NAMES = {chess.PAWN: "pawn", chess.KNIGHT: "knight", chess.BISHOP: "bishop", chess.ROOK: "rook",
               chess.QUEEN: "queen", chess.KING: "king"}
_PIECE_TYPES = {name: piece for piece, name in PIECE_NAMES.items()}
_PIECE = "|".join(PIECE_NAMES.values())
_SQUARE = "[a-h][1-8]"
_SUFFIX = "(?:, check|, checkmate)?"
_CASTLES = re.compile(rf"(White|Black) castles (kingside|queenside){_SUFFIX}")
_SAN_DISAMBIGUATION = re.compile(r"[NBRQK](?:[a-h][1-8]?|[1-8])x?[a-h][1-8]")
_PIECE_MOVE = re.compile(
    rf"(White|Black) (?:moves ({_PIECE})(?: from ({_SQUARE}))? to|({_PIECE})(?: from ({_SQUARE}))? takes on) "
    rf"({_SQUARE})(?: and promotes to (queen|rook|bishop|knight))?{_SUFFIX}"
)


def side_name(color: chess.Color) -> str:
    """``White`` or ``Black``."""
    return "White" if color == chess.WHITE else "Black"


def describe_move(board: chess.Board, move: chess.Move, san: str | None = None) -> str:
    """The English sentence (without its final full stop) of legal ``move`` on ``board``.
    ``san``, when given, must be ``board.san(move)`` (passing it saves computing it again)."""
    san = board.san(move) if san is None else san
    side = side_name(board.turn)
    suffix = {"+": ", check", "#": ", checkmate"}.get(san[-1], "")
    if board.is_castling(move):
        return f"{side} castles {'kingside' if board.is_kingside_castling(move) else 'queenside'}{suffix}"
    piece_type = board.piece_type_at(move.from_square)
    origin = f" from {chess.square_name(move.from_square)}" if _needs_origin(board, move, san) else ""
    piece, target = PIECE_NAMES[piece_type], chess.square_name(move.to_square)
    if board.is_capture(move):
        text = f"{side} {piece}{origin} takes on {target}"
    else:
        text = f"{side} moves {piece}{origin} to {target}"
    if move.promotion:
        text += f" and promotes to {PIECE_NAMES[move.promotion]}"
    return text + suffix


def _needs_origin(board: chess.Board, move: chess.Move, san: str) -> bool:
    """Whether another legal move of the same kind of piece reaches the same square: SAN's
    disambiguation for pieces; for a pawn capture, whether the pawn on the other diagonal could
    capture there too (SAN always names a capturing pawn's file)."""
    if board.piece_type_at(move.from_square) != chess.PAWN:
        return _SAN_DISAMBIGUATION.match(san) is not None
    from_file, to_file = chess.square_file(move.from_square), chess.square_file(move.to_square)
    if from_file == to_file:
        return False
    other_file = 2 * to_file - from_file
    if not 0 <= other_file < 8:
        return False
    other = chess.square(other_file, chess.square_rank(move.from_square))
    return board.piece_type_at(other) == chess.PAWN and board.color_at(other) == board.turn \
        and board.is_legal(chess.Move(other, move.to_square, move.promotion))


def parse_description(board: chess.Board, sentence: str) -> chess.Move | None:
    """The legal move ``sentence`` names on ``board`` (the inverse of :func:`describe_move`), or
    None for a sentence outside the grammar, for the wrong side, or naming no or several moves."""
    sentence = sentence.strip().removesuffix(".")
    castles = _CASTLES.fullmatch(sentence)
    if castles is not None:
        return _castling_move(board, castles.group(1), castles.group(2))
    match = _PIECE_MOVE.fullmatch(sentence)
    if match is None or match.group(1) != side_name(board.turn):
        return None
    piece = _PIECE_TYPES[match.group(2) or match.group(4)]
    origin = match.group(3) or match.group(5)
    target = chess.parse_square(match.group(6))
    promotion = _PIECE_TYPES[match.group(7)] if match.group(7) else None
    candidates = [move for move in board.legal_moves
                  if move.to_square == target and move.promotion == promotion
                  and board.piece_type_at(move.from_square) == piece
                  and (origin is None or move.from_square == chess.parse_square(origin))]
    return candidates[0] if len(candidates) == 1 else None


def _castling_move(board: chess.Board, side: str, wing: str) -> chess.Move | None:
    if side != side_name(board.turn):
        return None
    for move in board.legal_moves:
        if board.is_castling(move) and board.is_kingside_castling(move) == (wing == "kingside"):
            return move
    return None


def game_to_english(descriptions: Iterable[str], result: str) -> str:
    """One game line: the move sentences ``descriptions`` (from :func:`describe_move`), each with
    its full stop, then the sentence of ``result`` (``1-0``, ``0-1``, ``1/2-1/2`` or ``*``)."""
    return "".join(text + SENTENCE_END for text in descriptions) + RESULT_SENTENCES[result]
