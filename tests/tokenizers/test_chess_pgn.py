"""Tests for the chess PGN tokenizer and the named-tokenizer lookup."""

from __future__ import annotations

import io
import random
from pathlib import Path

import chess
import chess.pgn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.tokenizers import ChessPGNTokenizer, load_pretrained_tokenizer, load_tokenizer
from lmlab.tokenizers.chess_pgn import CASTLES, FILES, PIECES, RANKS, RESULTS, SQUARES

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PGN_FILES = sorted((DATA / "chess").glob("*.pgn"))
MAX_PLIES = 200
EXPORTER_OPTIONS = {"headers": False, "variations": False, "comments": False}


@pytest.fixture(scope="module")
def tok() -> ChessPGNTokenizer:
    return ChessPGNTokenizer()


def tokens_of(tok: ChessPGNTokenizer, text: str) -> list[str]:
    return [tok.id_to_token(i) for i in tok.encode(text)]


# ---------------------------------------------------------------- games with python-chess


def movetext(game: chess.pgn.Game) -> str:
    """SAN movetext without headers/comments/variations, on one line with single spaces."""
    return " ".join(game.accept(chess.pgn.StringExporter(**EXPORTER_OPTIONS)).split())


def mating_move(board: chess.Board) -> chess.Move | None:
    for move in board.legal_moves:
        if board.gives_check(move):
            board.push(move)
            mate = board.is_checkmate()
            board.pop()
            if mate:
                return move
    return None


def biased_move(board: chess.Board, rng: random.Random) -> chess.Move:
    """A random legal move, biased towards mates, promotions, castling, captures and checks."""
    if rng.random() < 0.8 and (mate := mating_move(board)) is not None:
        return mate
    moves = list(board.legal_moves)
    preferences = (
        (0.9, lambda m: m.promotion is not None),
        (0.9, board.is_castling),
        (0.5, board.is_capture),
        (0.3, board.gives_check),
    )
    for probability, wanted in preferences:
        candidates = [m for m in moves if wanted(m)]
        if candidates and rng.random() < probability:
            return rng.choice(candidates)
    return rng.choice(moves)


def random_game(seed: int, max_plies: int = MAX_PLIES) -> chess.Board:
    rng = random.Random(seed)
    board = chess.Board()
    while not board.is_game_over() and len(board.move_stack) < max_plies:
        board.push(biased_move(board, rng))
    return board


def assert_round_trip_and_replay(tok: ChessPGNTokenizer, board: chess.Board) -> list[int]:
    text = movetext(chess.pgn.Game.from_board(board))
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    assert decoded == text
    replayed = chess.pgn.read_game(io.StringIO(decoded))
    assert list(replayed.mainline_moves()) == board.move_stack
    return ids


def test_random_games_round_trip_and_cover_the_rare_moves(tok):
    seen: set[str] = set()
    for seed in range(24):
        ids = assert_round_trip_and_replay(tok, random_game(seed))
        seen.update(tok.id_to_token(i) for i in ids)
    rare = {"O-O", "O-O-O", "=Q", "=R", "=B", "=N", "+", "#", "x", "1-0", "0-1"}
    assert rare <= seen, f"the seeds no longer cover {rare - seen}"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), plies=st.integers(0, 80))
def test_any_random_game_round_trips(tok, seed, plies):
    assert_round_trip_and_replay(tok, random_game(seed, plies))


def test_several_games_are_separated_by_eos(tok):
    texts = [movetext(chess.pgn.Game.from_board(random_game(seed, 30))) for seed in (1, 2, 3)]
    text = "\n".join(texts)
    ids = tok.encode(text)
    assert ids.count(tok.special_tokens["eos"]) == 2
    assert tok.decode(ids) == text
    assert tok.decode_batch(tok.encode_batch(texts)) == texts


# ---------------------------------------------------------------- grammar-level properties

CHECKS = st.sampled_from(["", "+", "#"])
PROMOTIONS = st.sampled_from(["", "=Q", "=R", "=B", "=N"])
SQUARE = st.sampled_from(SQUARES)
PIECE_MOVES = st.builds(
    lambda piece, origin, capture, square, check: piece + origin + capture + square + check,
    st.sampled_from(PIECES),
    st.sampled_from(("",) + FILES + RANKS + SQUARES),
    st.sampled_from(["", "x"]),
    SQUARE,
    CHECKS,
)
PAWN_PUSHES = st.builds(lambda sq, promo, check: sq + promo + check, SQUARE, PROMOTIONS, CHECKS)
PAWN_CAPTURES = st.builds(
    lambda file, sq, promo, check: f"{file}x{sq}{promo}{check}",
    st.sampled_from(FILES), SQUARE, PROMOTIONS, CHECKS,
)
CASTLING = st.builds(str.__add__, st.sampled_from(CASTLES), CHECKS)
MOVE_NUMBERS = st.builds(
    lambda n, black: f"{n}." + (".." if black else ""), st.integers(1, 300), st.booleans()
)
WORDS = st.one_of(
    PIECE_MOVES, PAWN_PUSHES, PAWN_CAPTURES, CASTLING, MOVE_NUMBERS, st.sampled_from(RESULTS),
    st.sampled_from(["<pad>", "<s>"]),
)
LINES = st.lists(st.lists(WORDS, max_size=12).map(" ".join), min_size=1, max_size=4).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(text=LINES)
def test_any_grammatical_movetext_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    ("word", "tokens"),
    [
        ("e4", ["e4"]),
        ("Nbd7", ["N", "b", "d7"]),
        ("R1xe2", ["R", "1", "x", "e2"]),
        ("Qh4e1", ["Q", "h", "4", "e1"]),
        ("exd8=N+", ["e", "x", "d8", "=N", "+"]),
        ("O-O-O#", ["O-O-O", "#"]),
        ("12...", ["12.", ".."]),
        ("1/2-1/2", ["1/2-1/2"]),
    ],
)
def test_san_moves_split_into_their_parts(tok, word, tokens):
    assert tokens_of(tok, word) == tokens
    assert tok.decode(tok.encode(word)) == word


def test_vocabulary_is_fixed(tok):
    assert tok.vocab_size == 402
    vocab = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    assert len(set(vocab)) == tok.vocab_size
    assert vocab[:4] == ["<pad>", "<s>", "</s>", "a1"]
    assert vocab[-1] == "300."
    assert tok.special_tokens == {"pad": 0, "bos": 1, "eos": 2}
    assert all(tok.token_to_id(token) == i for i, token in enumerate(vocab))
    assert tok.token_to_id("e9") is None
    small = ChessPGNTokenizer(max_move_number=10)
    assert [small.id_to_token(i) for i in range(small.vocab_size)] == vocab[: small.vocab_size]


def test_known_game_tokens(tok):
    text = "1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0"
    assert tokens_of(tok, text) == [
        "1.", "e4", "e5", "2.", "N", "f3", "N", "c6", "3.", "B", "b5", "a6", "1-0",
    ]


def test_single_spaces_and_newlines_round_trip(tok):
    assert tok.encode("") == []
    assert tok.decode(tok.encode("1. e4 e5\n\n2. Nf3\n")) == "1. e4 e5\n\n2. Nf3\n"
    assert tok.decode(tok.encode("<s> 1. d4\n")) == "<s> 1. d4\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("1. e4  e5", "line 1, column 6"),
        ("1. e4\te5", "line 1, column 6"),
        ("1. e4 e5\r\n2. d4", "line 1, column 9"),
        (" 1. e4", "line 1, column 1"),
        ("1. e4 e5\n2. d4 ", "line 2, column 6"),
        ("1. e4\u00a0e5", "line 1, column 6"),
        (" \t ", "line 1, column 1"),
    ],
)
def test_spacing_decode_cannot_reproduce_is_an_error(tok, text, where):
    with pytest.raises(LmlabError, match="spacing") as caught:
        tok.encode(text)
    assert where in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. e4 {best by test} e5", ["'{best'", "column 7", "comment"]),
        ("1. e4 e5\n2. Nf3 $1", ["'$1'", "line 2, column 8", "NAG"]),
        ("1. e4!? e5", ["'e4!?'", "annotation"]),
        ('[Event "x"]\n1. e4', ["'[Event'", "header"]),
        ("1. e4 (1. d4) e5", ["'(1.'", "variation"]),
        ("1. e4 hello", ["'hello'", "column 7"]),
        ("1.e4", ["'1.e4'"]),
        ("1. 0-0", ["'0-0'"]),
        ("1. e4e5", ["'e4e5'"]),
        ("1. Ne8=Q", ["'Ne8=Q'"]),
        ("1. d4 d5 301. c4", ["'301.'", "maximum 300"]),
    ],
)
def test_text_outside_the_grammar_is_an_error_naming_it(tok, text, expected):
    with pytest.raises(LmlabError) as caught:
        tok.encode(text)
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_ids_outside_the_vocabulary_are_an_error(tok):
    with pytest.raises(LmlabError, match="outside the chess vocabulary"):
        tok.decode([3, 402])
    with pytest.raises(LmlabError):
        tok.id_to_token(-1)


# ---------------------------------------------------------------- save, load, names


def test_save_and_load_round_trip(tmp_path):
    tok = ChessPGNTokenizer(max_move_number=50)
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ChessPGNTokenizer)
    assert loaded.to_dict() == {"version": 1, "max_move_number": 50}
    text = "1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0"
    assert loaded.encode(text) == tok.encode(text)


def test_unknown_version_is_an_error():
    with pytest.raises(LmlabError, match="version"):
        ChessPGNTokenizer.from_dict({"version": 99})
    with pytest.raises(LmlabError, match="max_move_number"):
        ChessPGNTokenizer(max_move_number=0)


def test_built_in_and_saved_tokenizers_load_by_name_or_path(tmp_path):
    assert isinstance(load_pretrained_tokenizer("chess-pgn"), ChessPGNTokenizer)
    saved = ChessPGNTokenizer(max_move_number=20).save(tmp_path / "run")
    assert load_pretrained_tokenizer(tmp_path / "run").vocab_size == 122
    assert load_pretrained_tokenizer(str(saved)).vocab_size == 122
    with pytest.raises(LmlabError, match="neither a built-in name \\(chess-pgn\\)"):
        load_pretrained_tokenizer("chess")
    with pytest.raises(LmlabError, match="does not exist.*chess-pgn"):
        load_pretrained_tokenizer(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- the shared game collections


def movetexts_of_file(path: Path) -> list[str]:
    """Each game's movetext, taken textually: the non-header blocks, on one line."""
    blocks = path.read_text().split("\n\n")
    movetexts = [block for block in blocks if block.strip() and not block.startswith("[")]
    return [" ".join(block.split()) for block in movetexts]


@pytest.mark.skipif(not PGN_FILES, reason="no shared chess data")
@pytest.mark.parametrize("path", PGN_FILES, ids=lambda p: p.name)
def test_shared_pgn_files_round_trip(tok, path):
    texts = movetexts_of_file(path)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    reader = io.StringIO(path.read_text())
    for text in texts[:150]:  # python-chess is slow; re-export a sample the official way
        game = chess.pgn.read_game(reader)
        assert movetext(game) == text
        assert tok.decode(tok.encode(movetext(game))) == text
