"""``lmlab chess play``: a person plays a chess language model in the terminal, SAN in and out."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from lmlab.cli.common import err
from lmlab.errors import LmlabError

if TYPE_CHECKING:
    import chess

QUIT_WORDS = ("quit", "resign")


def cmd_chess_play(args: argparse.Namespace) -> int:
    """One game against the model of ``args.run``: the person's moves are read from stdin (SAN),
    the model's are printed in SAN; an illegal model move is resampled up to ``--resample`` times."""
    import chess

    from lmlab.recipes.chess_eval import MoveSampler, choose_move, notation_for
    from lmlab.training.run import load_run

    if args.resample < 0:
        raise LmlabError(f"--resample must be 0 or more, got {args.resample}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise LmlabError(f"--temperature must be a finite number ≥ 0 (0: greedy), got {args.temperature}")
    run = load_run(args.run, err)
    sampler = MoveSampler(run.model, notation_for(run.tokenizer, args.run), args.temperature, args.seed)
    person = chess.WHITE if args.color == "white" else chess.BLACK
    board, written, illegal = chess.Board(), [], 0
    print(f"You play {args.color}. Type moves in SAN (e4, Nf3, O-O, exd8=Q); 'quit' resigns.")
    while not board.is_game_over():
        if board.turn == person:
            move = _read_move(board)
            if move is None:
                print("You resign; the model wins.")
                break
        else:
            move, tries = choose_move(sampler, board, written, args.resample)
            illegal += len(tries)
            if tries:
                print(f"(the model tried {len(tries)} illegal move{'s' if len(tries) > 1 else ''}: "
                      + ", ".join(repr(t) for t in tries) + ")")
            if move is None:
                print(f"The model found no legal move in {args.resample + 1} tries and resigns.")
                break
            print(f"{_move_number(board)} the model plays {board.san(move)}")
        written.append(sampler.notation.move_text(board, move))
        board.push(move)
        print(board, flush=True)
    if board.is_game_over():
        print(f"Game over: {board.result()} ({board.outcome().termination.name.lower().replace('_', ' ')})")
    print(f"Moves: {chess.Board().variation_san(board.move_stack) or '(none)'}")
    print(f"Illegal model moves (resampled): {illegal}")
    return 0


def _read_move(board: "chess.Board") -> "chess.Move | None":
    """The person's next legal move from stdin (SAN), asking again after a bad one; None at the
    end of input or on 'quit'."""
    while True:
        print(f"{_move_number(board)} your move: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in QUIT_WORDS:
            print()
            return None
        text = line.strip()
        try:
            return board.parse_san(text)
        except ValueError:
            legal = ", ".join(sorted(board.san(m) for m in board.legal_moves))
            print(f"{text!r} is not a legal move here; legal moves: {legal}")


def _move_number(board: "chess.Board") -> str:
    return f"{board.fullmove_number}." if board.turn else f"{board.fullmove_number}..."


def add_chess_parsers(sub: argparse._SubParsersAction) -> None:
    chess_parser = sub.add_parser("chess", help="play a chess language model (see 'lmlab recipe run chess')")
    chess_sub = chess_parser.add_subparsers(dest="chess_command", required=True, parser_class=type(chess_parser))
    play = chess_sub.add_parser("play", help="play the model in the terminal: SAN in, SAN out")
    play.add_argument("run", help="a chess run: an arm of 'lmlab recipe run chess' or a run trained with chess-pgn")
    play.add_argument("--color", choices=("white", "black"), default="white", help="the side you play (default white)")
    play.add_argument("--resample", type=int, default=3,
                      help="times an illegal model move is sampled again before the model resigns (default 3)")
    play.add_argument("--temperature", type=float, default=0.5,
                      help="sampling temperature of the model's moves; 0 is greedy (default 0.5)")
    play.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    play.set_defaults(func=cmd_chess_play)
