"""``lmlab chess play``: a person's moves on stdin against a tiny chess-pgn run; every move the
game shows is replayed with python-chess."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import chess
import pytest

from lmlab.cli import main

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.context_length=64",
        "train.batch_size=2", "train.eval_batches=1", "train.sample_chars=0", "train.warmup_steps=1",
        "data.tokenizer=chess-pgn", "data.val_fraction=0.5"]
GAMES = "".join(f'[Event "{n}"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 5. O-O Be7 1/2-1/2\n\n' for n in range(8))
MOVE_LINE = re.compile(r"\d+\.(?:\.\.)? the model plays (\S+)$")


@pytest.fixture(scope="module")
def chess_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("chess-play")
    games = tmp / "games.pgn"
    games.write_text(GAMES, encoding="utf-8")
    argv = ["train", "--data", str(games), "--out", str(tmp / "run"), "--max-steps", "2", "--no-progress", "--set", *TINY]
    assert main(argv) == 0
    return tmp / "run"


def _play(run: Path, moves: str, *flags: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(moves))
    assert main(["chess", "play", str(run), *flags]) == 0
    return capsys.readouterr().out


def _replayed(output: str) -> tuple[chess.Board, list[str]]:
    """The game the output's ``Moves:`` line shows, replayed (an illegal move raises), and its SAN."""
    [line] = [line for line in output.splitlines() if line.startswith("Moves: ")]
    words = [w for w in line.removeprefix("Moves: ").split() if not w[0].isdigit() and w != "(none)"]
    board = chess.Board()
    for san in words:
        board.push_san(san)
    return board, words


def _model_moves(output: str) -> list[str]:
    return [found.group(1) for line in output.splitlines() if (found := MOVE_LINE.search(line))]


def test_a_game_as_white_with_bad_moves_in_the_middle(chess_run, monkeypatch, capsys):
    output = _play(chess_run, "e4\nKe5\nzz\nNf3\nquit\n", "--resample", "2", "--seed", "1",
                   monkeypatch=monkeypatch, capsys=capsys)
    assert "You play white" in output
    board, sans = _replayed(output)
    assert sans[0] == "e4" and sans[1::2] == _model_moves(output)
    tries = sum(len(re.findall(r"'[^']*'", line.split("(the model tried", 1)[1]))
                for line in output.splitlines() if "(the model tried" in line)
    assert f"Illegal model moves (resampled): {tries}" in output
    if len(sans) >= 2:  # the model found a first move: the bad moves were refused, then Nf3 played
        assert "'Ke5' is not a legal move here" in output and "'zz' is not a legal move here" in output
        assert sans[2] == "Nf3"
    if "resigns" in output:  # every try of a model move was illegal
        assert "The model found no legal move in 3 tries and resigns." in output and board.turn == chess.BLACK
    else:
        assert "You resign; the model wins." in output and len(sans) == 3


def test_model_moves_first_as_black(chess_run, monkeypatch, capsys):
    output = _play(chess_run, "", "--color", "black", "--temperature", "0", monkeypatch=monkeypatch, capsys=capsys)
    assert "You play black" in output
    board, sans = _replayed(output)
    assert sans == _model_moves(output) and len(sans) <= 1


def test_every_shown_model_move_is_legal(chess_run, monkeypatch, capsys):
    moves = ["e4", "Nf3", "Bc4", "d3", "Nc3"]
    output = _play(chess_run, "\n".join(moves) + "\n", "--resample", "5", monkeypatch=monkeypatch, capsys=capsys)
    board, sans = _replayed(output)
    assert sans[0::2] == moves[: len(sans[0::2])] and sans[1::2] == _model_moves(output)
