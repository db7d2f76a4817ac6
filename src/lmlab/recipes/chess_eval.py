"""Judge a chess language model with python-chess: which of its moves are legal.

A :class:`Notation` turns a game so far into prompt ids and reads the model's continuation back
as one move: :class:`PGNNotation` (SAN movetext, the ``chess-pgn`` vocabulary) or
:class:`EnglishNotation` (the sentences of :mod:`lmlab.recipes.chess_english`, any tokenizer).
On top of it:

* :func:`legal_move_rate` — greedy next move at positions of held-out games;
* :func:`self_play` — games the model plays against itself from the start (sampled);
* :func:`match_against_random` — games against a uniformly random legal mover;
* :func:`choose_move` — one move for a position, resampling an illegal one (``lmlab chess play``).

Every model move is a batch of prompts continued by :func:`lmlab.generation.generate_batch`;
a prompt longer than the model's context keeps its last tokens.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import chess
from torch import nn

from lmlab.errors import LmlabError, read_json_file
from lmlab.generation import GenerationConfig, generate_batch
from lmlab.recipes.chess_english import describe_move, parse_description
from lmlab.tokenizers import ChessPGNTokenizer, Tokenizer

NOTATION_FILE = "chess-notation.json"  # in a run directory: which notation its model was trained on
MOVE_40_PLIES = 80  # "reaching move 40": both sides' 40th move played
OPENING_PLIES = 4
BATCH_SIZE = 32


class Notation(Protocol):
    """How one notation writes games for a model and reads the model's moves back."""

    name: str
    tokenizer: Tokenizer
    max_move_tokens: int  # new tokens generated for one move (enough for the longest)

    def move_text(self, board: chess.Board, move: chess.Move) -> str:
        """How ``move`` (legal on ``board``) is written."""
        ...

    def prompt_ids(self, written: Sequence[str]) -> list[int]:
        """Prompt ids of a game whose moves so far are written as ``written``."""
        ...

    def read_move(self, board: chess.Board, new_ids: Sequence[int]) -> tuple[str, chess.Move | None]:
        """The move text the model wrote in ``new_ids`` and the legal move it names (or None)."""
        ...


class PGNNotation:
    """SAN movetext as in a PGN file (``1. e4 e5 2. Nf3``), after a game separator; the prompt
    ends with the move number when White is to move, and the model's first word is its move."""

    name = "pgn"
    max_move_tokens = 7  # the longest SAN, e.g. Q h 4 x e1 + (6 tokens), and one more

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.separator = tokenizer.special_tokens["eos"]

    def move_text(self, board: chess.Board, move: chess.Move) -> str:
        return board.san(move)

    def prompt_ids(self, written: Sequence[str]) -> list[int]:
        words = []
        for ply, san in enumerate(written):
            words += [f"{ply // 2 + 1}.", san] if ply % 2 == 0 else [san]
        if len(written) % 2 == 0:
            words.append(f"{len(written) // 2 + 1}.")
        return [self.separator] + self.tokenizer.encode(" ".join(words))

    def read_move(self, board: chess.Board, new_ids: Sequence[int]) -> tuple[str, chess.Move | None]:
        ids = list(new_ids)
        if self.separator in ids:
            ids = ids[: ids.index(self.separator)]
        words = self.tokenizer.decode(ids).split()
        text = words[0] if words else ""
        return text, _parsed_san(board, text)


class EnglishNotation:
    """English sentences (``White moves pawn to e4. Black knight takes on f6.``) after a newline;
    the prompt ends with the last full stop, and the model's text up to its next full stop is its
    move."""

    name = "english"
    max_move_tokens = 24

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def move_text(self, board: chess.Board, move: chess.Move) -> str:
        return describe_move(board, move)

    def prompt_ids(self, written: Sequence[str]) -> list[int]:
        return self.tokenizer.encode("\n" + " ".join(text + "." for text in written))

    def read_move(self, board: chess.Board, new_ids: Sequence[int]) -> tuple[str, chess.Move | None]:
        text = self.tokenizer.decode(list(new_ids)).lstrip(" ").split("\n")[0].split(".")[0].strip()
        return text, parse_description(board, text)


def _parsed_san(board: chess.Board, text: str) -> chess.Move | None:
    """python-chess's reading of SAN ``text`` on ``board``: the legal move, or None."""
    if not text:
        return None
    try:
        return board.parse_san(text)
    except ValueError:  # illegal, ambiguous or not SAN
        return None


def notation_for(tokenizer: Tokenizer, run_dir: str | Path | None = None) -> Notation:
    """The notation a model was trained on: PGN for the ``chess-pgn`` vocabulary, English when
    its run directory says so (:data:`NOTATION_FILE`, written by the chess recipe)."""
    if isinstance(tokenizer, ChessPGNTokenizer):
        return PGNNotation(tokenizer)
    marker = Path(run_dir) / NOTATION_FILE if run_dir is not None else None
    if marker is not None and marker.is_file():
        name = read_json_file(marker, "delete it or re-run the chess recipe", dict).get("notation")
        if name == EnglishNotation.name:
            return EnglishNotation(tokenizer)
    raise LmlabError(f"{run_dir} is not a chess model: its tokenizer is not chess-pgn and it has no "
                     f"{NOTATION_FILE}; train one with 'lmlab recipe run chess' or "
                     "'lmlab train --set data.tokenizer=chess-pgn'")


def write_notation(run_dir: Path, notation: Notation) -> None:
    """Record in ``run_dir`` which notation its model was trained on."""
    (run_dir / NOTATION_FILE).write_text(json.dumps({"notation": notation.name}) + "\n", encoding="utf-8")


@dataclass
class MoveSampler:
    """Continues many prompts by one move each: the model, its notation and how to decode."""

    model: nn.Module
    notation: Notation
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    calls: int = field(default=0, init=False)

    def moves(self, boards: Sequence[chess.Board], written: Sequence[Sequence[str]]) -> list[tuple[str, chess.Move | None]]:
        """For each position (its board and its moves so far as written), the model's move text
        and the legal move it names (None when it is not one)."""
        found: list[tuple[str, chess.Move | None]] = []
        for start in range(0, len(boards), BATCH_SIZE):
            prompts = [self._fitted(self.notation.prompt_ids(w)) for w in written[start:start + BATCH_SIZE]]
            new = generate_batch(self.model, prompts, self._config()).sequences
            found += [self.notation.read_move(board, ids) for board, ids in zip(boards[start:start + BATCH_SIZE], new)]
        return found

    def _config(self) -> GenerationConfig:
        self.calls += 1
        if self.temperature <= 0:
            return GenerationConfig(max_new_tokens=self.notation.max_move_tokens, draft_tokens=0)
        return GenerationConfig(max_new_tokens=self.notation.max_move_tokens, strategy="sample",
                                temperature=self.temperature, seed=self.seed * 100_003 + self.calls, draft_tokens=0)

    def _fitted(self, prompt: list[int]) -> list[int]:
        """The prompt's last tokens that leave room for one move in the model's context."""
        room = self.model.max_positions
        if room is None:
            return prompt
        keep = room - self.notation.max_move_tokens
        if keep < 1:
            raise LmlabError(f"the model's context ({room} tokens) cannot hold a prompt and a move of "
                             f"{self.notation.max_move_tokens} tokens; train it with a longer model.context_length")
        return prompt[-keep:]


def legal_move_rate(sampler: MoveSampler, games: Sequence[Sequence[chess.Move]], positions: int,
                    seed: int) -> dict[str, Any]:
    """The share of legal greedy moves at ``positions`` positions drawn (seeded) from ``games``
    (each a list of moves from the start), with every position's record: game, ply, FEN, the
    model's text and the move it names (UCI) or None."""
    plies = [(g, ply) for g, moves in enumerate(games) for ply in range(len(moves))]
    if not plies:
        raise LmlabError("the held-out games have no moves to evaluate; give games with at least one move")
    chosen = sorted(random.Random(seed).sample(plies, min(positions, len(plies))))
    boards, written = [], []
    for g, ply in chosen:
        board, texts = _replayed(sampler.notation, games[g][:ply])
        boards.append(board)
        written.append(texts)
    records = []
    for (g, ply), board, (text, move) in zip(chosen, boards, sampler.moves(boards, written)):
        records.append({"game": g, "ply": ply, "fen": board.fen(), "text": text,
                        "move": move.uci() if move else None})
    legal = sum(r["move"] is not None for r in records)
    return {"positions": len(records), "legal": legal, "legal_move_rate": legal / len(records), "records": records}


def _replayed(notation: Notation, moves: Sequence[chess.Move]) -> tuple[chess.Board, list[str]]:
    board, texts = chess.Board(), []
    for move in moves:
        texts.append(notation.move_text(board, move))
        board.push(move)
    return board, texts


@dataclass
class _Game:
    """A game in progress: the board, its moves as the model's notation writes them, its end."""

    board: chess.Board = field(default_factory=chess.Board)
    written: list[str] = field(default_factory=list)
    result: str | None = None
    illegal_text: str | None = None
    first_illegal_ply: int | None = None

    def play(self, notation: Notation, move: chess.Move) -> None:
        self.written.append(notation.move_text(self.board, move))
        self.board.push(move)
        if self.board.is_game_over():
            self.result = self.board.result()

    def record(self) -> dict[str, Any]:
        return {"moves": [m.uci() for m in self.board.move_stack], "result": self.result,
                "first_illegal_ply": self.first_illegal_ply, "illegal_text": self.illegal_text}


def self_play(sampler: MoveSampler, games: int, max_plies: int) -> dict[str, Any]:
    """``games`` games the model plays against itself from the start (each stops at its first
    illegal move, at the end of the game, or after ``max_plies`` plies) and their statistics."""
    played = [_Game() for _ in range(games)]
    for _ in range(max_plies):
        active = [game for game in played if game.result is None]
        if not active:
            break
        for game, (text, move) in zip(active, sampler.moves([g.board for g in active], [g.written for g in active])):
            if move is None:
                game.result, game.illegal_text, game.first_illegal_ply = "illegal", text, len(game.written)
            else:
                game.play(sampler.notation, move)
    for game in played:
        game.result = game.result or "unfinished"
    return self_play_summary([game.record() for game in played])


def self_play_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of self-play games (:func:`self_play`'s records)."""
    legal_plies = [r["first_illegal_ply"] if r["first_illegal_ply"] is not None else len(r["moves"]) for r in records]
    clean_to_40 = [r["first_illegal_ply"] is None or r["first_illegal_ply"] >= MOVE_40_PLIES for r in records]
    openings = {tuple(r["moves"][:OPENING_PLIES]) for r in records if len(r["moves"]) >= OPENING_PLIES}
    return {
        "games": len(records),
        "reach_move_40_share": sum(clean_to_40) / len(records),
        "mean_plies_before_illegal": sum(legal_plies) / len(records),
        "results": dict(Counter(r["result"] for r in records)),
        "distinct_openings": len(openings),
        "records": records,
    }


def match_against_random(sampler: MoveSampler, games: int, max_plies: int, resample: int,
                         seed: int) -> dict[str, Any]:
    """``games`` games against a random legal mover (the model White in even-numbered games).
    An illegal model move is resampled up to ``resample`` times; when every try is illegal the
    model forfeits. A game still going after ``max_plies`` plies counts as a draw. The score is
    the model's points (1 a win, ½ a draw) over the games."""
    chooser = random.Random(seed)
    played = [_Game() for _ in range(games)]
    colors = [chess.WHITE if g % 2 == 0 else chess.BLACK for g in range(games)]
    illegal_tries = 0
    for _ in range(max_plies):
        active = [(game, color) for game, color in zip(played, colors) if game.result is None]
        if not active:
            break
        model_turn = [game for game, color in active if game.board.turn == color]
        for game in [game for game, color in active if game.board.turn != color]:
            game.play(sampler.notation, chooser.choice(sorted(game.board.legal_moves, key=chess.Move.uci)))
        illegal_tries += _model_moves(sampler, model_turn, resample)
    points = 0.0
    for game, color in zip(played, colors):
        game.result = game.result or "unfinished"
        points += _points(game.result, color)
    records = [game.record() | {"model_color": "white" if color else "black"} for game, color in zip(played, colors)]
    return {"games": games, "score": points / games, "illegal_tries": illegal_tries,
            "forfeits": sum(r["result"] == "forfeit" for r in records),
            "results": dict(Counter(r["result"] for r in records)), "records": records}


def _model_moves(sampler: MoveSampler, games: list[_Game], resample: int) -> int:
    """Play the model's move in each of ``games`` (resampling illegal ones); returns the number of
    illegal tries. A game whose every try was illegal ends as a forfeit."""
    waiting, illegal = list(games), 0
    for _ in range(resample + 1):
        if not waiting:
            break
        still = []
        for game, (text, move) in zip(waiting, sampler.moves([g.board for g in waiting], [g.written for g in waiting])):
            if move is None:
                illegal += 1
                still.append(game)
                if game.first_illegal_ply is None:
                    game.first_illegal_ply, game.illegal_text = len(game.written), text
            else:
                game.play(sampler.notation, move)
        waiting = still
    for game in waiting:
        game.result = "forfeit"
    return illegal


def _points(result: str, color: chess.Color) -> float:
    if result in ("1/2-1/2", "unfinished"):
        return 0.5
    won = {"1-0": chess.WHITE, "0-1": chess.BLACK}.get(result)
    return 1.0 if won == color else 0.0


def choose_move(sampler: MoveSampler, board: chess.Board, written: Sequence[str],
                resample: int) -> tuple[chess.Move | None, list[str]]:
    """The model's move on ``board`` (its game so far written as ``written``), trying up to
    ``resample`` more times after an illegal one; returns the move (None when every try was
    illegal) and the texts of the illegal tries."""
    illegal: list[str] = []
    for _ in range(resample + 1):
        [(text, move)] = sampler.moves([board], [written])
        if move is not None:
            return move, illegal
        illegal.append(text)
    return None, illegal
