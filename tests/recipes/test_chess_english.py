"""English move descriptions: deterministic sentences and their inverse, checked against
python-chess's own move generation and SAN."""

from __future__ import annotations

import random

import chess
import pytest

from lmlab.recipes.chess_english import describe_move, game_to_english, parse_description


def _random_positions(games: int, plies: int, seed: int = 0):
    """Positions of random legal games (python-chess picks the legal moves)."""
    chooser = random.Random(seed)
    for _ in range(games):
        board = chess.Board()
        for _ in range(plies):
            if board.is_game_over():
                break
            yield board
            board.push(chooser.choice(sorted(board.legal_moves, key=chess.Move.uci)))


def test_every_legal_move_reads_back_as_itself():
    checked = 0
    for board in _random_positions(3, 80):
        for move in board.legal_moves:
            assert parse_description(board, describe_move(board, move)) == move
            checked += 1
    assert checked > 1000


def test_origin_is_named_exactly_when_another_piece_of_its_kind_reaches_the_square():
    """The reference: python-chess's legal moves, same piece type, same destination, same promotion."""
    for board in _random_positions(3, 80, seed=1):
        for move in board.legal_moves:
            piece = board.piece_type_at(move.from_square)
            rivals = [m for m in board.legal_moves if m != move and m.to_square == move.to_square
                      and m.promotion == move.promotion and board.piece_type_at(m.from_square) == piece]
            assert (" from " in describe_move(board, move)) == bool(rivals)


@pytest.mark.parametrize(("fen", "uci", "sentence"), [
    (chess.STARTING_FEN, "e2e4", "White moves pawn to e4"),
    (chess.STARTING_FEN, "g1f3", "White moves knight to f3"),
    ("rnbqkb1r/pppp1ppp/5n2/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3", "f3e5", "White knight takes on e5"),
    ("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1", "e1g1", "White castles kingside"),
    ("r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1", "e8c8", "Black castles queenside"),
    ("8/1P6/8/8/8/8/6k1/K7 w - - 0 1", "b7b8q", "White moves pawn to b8 and promotes to queen"),
    ("2r5/1P6/8/8/8/8/6k1/K7 w - - 0 1", "b7c8n", "White pawn takes on c8 and promotes to knight"),
    ("4k3/8/8/8/8/8/8/R3K3 w - - 0 1", "a1a8", "White moves rook to a8, check"),
    ("6k1/5ppp/8/8/8/8/8/R3K3 w - - 0 1", "a1a8", "White moves rook to a8, checkmate"),
    ("4k3/8/8/8/8/8/8/N3K2N w - - 0 1", "a1b3", "White moves knight to b3"),
    ("4k3/8/8/8/8/8/1N3N2/4K3 w - - 0 1", "b2d3", "White moves knight from b2 to d3"),
    ("4k3/8/8/3p4/2P1P3/8/8/4K3 w - - 0 1", "c4d5", "White pawn from c4 takes on d5"),
    ("4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 2", "e5d6", "White pawn takes on d6"),
])
def test_sentences(fen, uci, sentence):
    board = chess.Board(fen)
    move = chess.Move.from_uci(uci)
    assert describe_move(board, move) == sentence
    assert describe_move(board, move, board.san(move)) == sentence


@pytest.mark.parametrize("sentence", [
    "Black moves pawn to e5",                    # not Black's turn
    "White moves pawn to e5",                    # no pawn reaches e5
    "White moves knight to e4",                  # no knight reaches e4
    "White moves pawn to e4 and promotes to queen",
    "White castles kingside",                    # not possible yet
    "White wins",                                # a result, not a move
    "white moves pawn to e4",                    # outside the grammar
    "",
])
def test_sentences_that_name_no_legal_move(sentence):
    assert parse_description(chess.Board(), sentence) is None


def test_ambiguous_sentence_names_no_move_but_its_origin_does():
    board = chess.Board("4k3/8/8/8/8/8/1N3N2/4K3 w - - 0 1")
    assert parse_description(board, "White moves knight to d3") is None
    assert parse_description(board, "White moves knight from f2 to d3") == chess.Move.from_uci("f2d3")


def test_like_parse_san_it_ignores_what_follows_from_the_move():
    """python-chess's parse_san accepts Nxf3 and Nf3+ for a quiet Nf3; so does the English reading."""
    board = chess.Board()
    assert board.parse_san("Nxf3+") == chess.Move.from_uci("g1f3")
    for sentence in ("White knight takes on f3", "White moves knight to f3, check", "White moves knight from g1 to f3."):
        assert parse_description(board, sentence) == chess.Move.from_uci("g1f3")


def test_a_game_line():
    board = chess.Board()
    sentences = []
    for san in ("e4", "e5", "Qh5", "Nc6", "Bc4", "Nf6", "Qxf7#"):
        move = board.parse_san(san)
        sentences.append(describe_move(board, move))
        board.push(move)
    line = game_to_english(sentences, board.result())
    assert line == ("White moves pawn to e4. Black moves pawn to e5. White moves queen to h5. "
                    "Black moves knight to c6. White moves bishop to c4. Black moves knight to f6. "
                    "White queen takes on f7, checkmate. White wins.")
