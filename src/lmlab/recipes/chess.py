"""Recipe ``chess`` (O'Reilly, chapter 4): a language model of chess games, in two notations.

Arm ``pgn``: a decoder trained on SAN movetext with the fixed ``chess-pgn`` vocabulary. Arm
``english``: the same games rewritten as English sentences (:mod:`lmlab.recipes.chess_english`)
with a byte-level BPE vocabulary trained on them. Both train for the same wall-clock time with the
same seed and model shape, and are judged by python-chess (:mod:`lmlab.recipes.chess_eval`):
legal-move rate at positions of held-out games, games played against itself from the start
(reaching move 40 without an illegal move, plies before the first illegal move, results, distinct
openings) and a match against a random legal mover.

Data: a ``.pgn`` or ``.pgn.zst`` file (the Lichess database format, streamed) or a directory of
them. ``--val`` names the held-out games (a file or directory like ``--data``); without it, files
with ``val`` in the name of a ``--data`` directory are the held-out games, and otherwise the last
tenth of the games read (at most the budget's number) is held out. Games set up from a position
(a ``FEN`` header) or of another variant are skipped. :func:`run_chess_recipe` also takes
``min_elo``: keep only games whose two players are rated at least that (``WhiteElo``/``BlackElo``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import chess
import chess.pgn

from lmlab.data.readers import is_pgn_file, open_pgn
from lmlab.errors import LmlabError
from lmlab.recipes import run_declared
from lmlab.recipes.base import DataSource, Recipe, RecipeContext, RecipeReport, markdown_table, write_report
from lmlab.recipes.chess_english import RESULT_SENTENCES, describe_move, game_to_english
from lmlab.recipes.chess_eval import (
    EnglishNotation, MoveSampler, Notation, PGNNotation, legal_move_rate, match_against_random, self_play,
    write_notation,
)
from lmlab.tokenizers import train_tokenizer
from lmlab.tokenizers.chess_pgn import DEFAULT_MAX_MOVE_NUMBER
from lmlab.training.config import RunConfig
from lmlab.training.run import load_run, make_trainer
from lmlab.viz.curves import plot_validation_curves

ARMS = ("pgn", "english")
ENGLISH_VOCAB_SIZE = 512
EVAL_FILE = "chess-eval.json"  # in each arm's directory: every evaluated position and game
SELF_PLAY_TEMPERATURE = 1.0  # sampled, so the games differ
MATCH_TEMPERATURE = 0.5
MATCH_RESAMPLE = 3


@dataclass(frozen=True)
class Scale:
    """What one budget trains and evaluates: the model's shape, batch and learning rate, how many
    games it reads, and how much evaluation it runs."""

    n_layer: int
    n_head: int
    d_model: int
    context_length: int
    batch_size: int
    lr: float  # peak; the cosine decay ends at a tenth of it
    warmup_steps: int
    train_games: int
    val_games: int
    positions: int  # held-out positions judged for the legal-move rate
    self_play_games: int
    self_play_plies: int
    match_games: int
    match_plies: int


SCALES = {
    "small": Scale(2, 2, 64, 128, 16, 4e-3, 30, 600, 60, 60, 6, 90, 4, 120),
    "default": Scale(4, 4, 128, 256, 8, 4e-3, 30, 6000, 300, 400, 16, 100, 16, 160),
    "large": Scale(8, 8, 512, 512, 64, 1e-3, 200, 200_000, 1000, 2000, 64, 160, 64, 300),
}
# The default's shape, batch and learning rate, compared at equal steps on self-play games by the
# legal-move rate: two layers cost half as much per step as four but learn less (much less on the
# English arm); two layers 256 or 64 wide and a learning rate of 2e-3, 6e-3 or 1e-2 learn less; a
# batch of 4 learns less per step and one of 16 no more at twice the cost, since on a CPU a step
# costs about the same per token at any batch size.
# Rotary positions: a training window starts anywhere in the stream of games, while every prompt
# of the evaluation starts at a game's first token; with learned absolute positions the model
# reads a game start at position 0 (which training hardly ever shows it) much worse than the same
# game start later in a window.
POSITION = "rope"


@dataclass
class ChessGame:
    """One game read from PGN: its moves, how each is written in SAN and in English, its result."""

    moves: list[chess.Move]
    sans: list[str]
    english: list[str]
    result: str

    def movetext(self) -> str:
        """One PGN line, e.g. ``1. e4 e5 2. Nf3 1-0``."""
        words = []
        for ply, san in enumerate(self.sans):
            words += [f"{ply // 2 + 1}.", san] if ply % 2 == 0 else [san]
        return " ".join(words + [self.result])

    def english_line(self) -> str:
        """One line of English sentences, the result last."""
        return game_to_english(self.english, self.result)


class _MainLine(chess.pgn.BaseVisitor):
    """Reads one game's headers and main line, writing each move in SAN and in English."""

    def begin_game(self) -> None:
        self.headers: dict[str, str] = {}
        self.game = ChessGame([], [], [], "*")
        self.error: Exception | None = None
        self.skipped = False

    def visit_header(self, tagname: str, tagvalue: str) -> None:
        self.headers[tagname] = tagvalue

    def end_headers(self) -> Any:
        if "FEN" in self.headers or self.headers.get("Variant", "Standard").lower() not in ("standard", "chess"):
            self.skipped = True
            return chess.pgn.SKIP
        return None

    def begin_variation(self) -> Any:
        return chess.pgn.SKIP

    def visit_move(self, board: chess.Board, move: chess.Move) -> None:
        san = board.san(move)
        self.game.sans.append(san)
        self.game.english.append(describe_move(board, move, san))
        self.game.moves.append(move)

    def visit_result(self, result: str) -> None:
        self.game.result = result if result in RESULT_SENTENCES else "*"

    def handle_error(self, error: Exception) -> None:
        self.error = self.error or error

    def result(self) -> "_MainLine":
        return self


def pgn_files(path: Path) -> list[Path]:
    """The ``.pgn``/``.pgn.zst`` files ``path`` names: itself, or those in the directory."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_pgn_file(p))
        if not files:
            raise LmlabError(f"{path} holds no .pgn or .pgn.zst files; point --data at PGN games")
        return files
    if not is_pgn_file(path):
        raise LmlabError(f"{path} is not a chess game file; --data takes a .pgn or .pgn.zst file or a directory of them")
    return [path]


def read_games(files: list[Path], limit: int, min_elo: int = 0) -> Iterator[ChessGame]:
    """Up to ``limit`` standard games of ``files`` whose players are both rated ``min_elo`` or more,
    streamed. A game python-chess cannot replay is an error naming the file and the game."""
    kept = 0
    for path in files:
        with open_pgn(path) as handle:
            number = 0
            while kept < limit:
                visitor = _read_one(handle, path, number + 1)
                if visitor is None:
                    break
                number += 1
                if visitor.error is not None:
                    reason = str(visitor.error).strip().splitlines()[0]
                    raise LmlabError(f"{path}, game {number}: {reason}; fix or remove the game")
                if visitor.skipped or not _rated(visitor.headers, min_elo) \
                        or len(visitor.game.moves) > 2 * DEFAULT_MAX_MOVE_NUMBER:
                    continue
                kept += 1
                yield visitor.game
            if number == 0:
                raise LmlabError(f"{path} holds no chess games; point --data at PGN games")


def _read_one(handle: Any, path: Path, number: int) -> _MainLine | None:
    try:
        return chess.pgn.read_game(handle, Visitor=_MainLine)
    except UnicodeDecodeError as exc:
        raise LmlabError(f"{path}, game {number}: not UTF-8 text (bad byte at offset {exc.start}); "
                         "convert the file to UTF-8") from None


def _rated(headers: dict[str, str], min_elo: int) -> bool:
    if min_elo <= 0:
        return True
    ratings = [headers.get("WhiteElo", ""), headers.get("BlackElo", "")]
    return all(r.isdigit() and int(r) >= min_elo for r in ratings)


def split_games(data: Path, scale: Scale, min_elo: int,
                val: Path | None = None) -> tuple[list[ChessGame], list[ChessGame]]:
    """Training and held-out games of ``data`` (see the module docstring for the rule); with
    ``val``, the held-out games are those of ``val`` and every game of ``data`` but its
    validation files trains."""
    files = pgn_files(data)
    held_out_files = pgn_files(val) if val is not None else [f for f in files if "val" in f.name.lower()]
    train_files = [f for f in files if "val" not in f.name.lower()] if val is not None \
        else [f for f in files if f not in held_out_files]
    if not train_files:
        raise LmlabError(f"{data}: every file is a validation file ('val' in its name); add training games")
    if held_out_files:
        train = list(read_games(train_files, scale.train_games, min_elo))
        held_out = list(read_games(held_out_files, scale.val_games, min_elo))
    else:
        games = list(read_games(files, scale.train_games + scale.val_games, min_elo))
        cut = len(games) - min(scale.val_games, max(1, len(games) // 10))
        train, held_out = games[:cut], games[cut:]
    rule = f" with both players rated {min_elo} or more" if min_elo > 0 else ""
    for name, games in (("training", train), ("held-out", held_out)):
        if not games:
            raise LmlabError(f"{data}: no {name} games{rule}; the recipe needs at least two games"
                             + (" (lower min_elo)" if rule else ""))
    return train, held_out


@dataclass(frozen=True)
class ChessOptions:
    """What :func:`run_chess_recipe` takes beyond the runner's options."""

    min_elo: int = 0  # keep games whose two players are both rated at least this


def run_chess_recipe(out_dir: str | Path, *, options: ChessOptions = ChessOptions(), budget: str = "default",
                     max_time: float | None = None, **context_options: Any) -> Path:
    """:func:`lmlab.recipes.run_recipe` for chess with :class:`ChessOptions` (e.g. a ``min_elo``
    filter on Lichess games); returns the report's path."""
    recipe = dataclasses.replace(RECIPE, run=lambda context: run_chess(context, options))
    return run_declared(recipe, out_dir, budget=budget, max_time=max_time, **context_options)


def run_chess(context: RecipeContext, options: ChessOptions = ChessOptions()) -> RecipeReport:
    """Prepare the two notations of the games, train and judge both arms, and report."""
    scale = SCALES[context.budget]
    started = time.perf_counter()
    train, held_out = split_games(context.data_path(), scale, options.min_elo, context.val_path())
    data_dir = context.out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    corpora = {"pgn": data_dir / "pgn-train.txt", "english": data_dir / "english-train.txt"}
    corpora["pgn"].write_text("".join(g.movetext() + "\n" for g in train), encoding="utf-8")
    corpora["english"].write_text("".join(g.english_line() + "\n" for g in train), encoding="utf-8")
    english_tokenizer = data_dir / "english-tokenizer"
    train_tokenizer("bpe", [corpora["english"]], ENGLISH_VOCAB_SIZE).save(english_tokenizer)
    prepared_s = time.perf_counter() - started
    context.echo(f"{len(train)} training and {len(held_out)} held-out games, both notations in {prepared_s:.0f} s")
    tokenizers = {"pgn": "chess-pgn", "english": str(english_tokenizer)}
    results, configs = {}, {}
    for arm in ARMS:
        configs[arm] = arm_config(context, scale, corpora[arm], tokenizers[arm])
        context.save_arm_config(arm, configs[arm].to_dict())
        results[arm] = context.run_arm(arm, _arm_runner(context, scale, arm, configs[arm], held_out))
    return _report(context, results, len(train), len(held_out), prepared_s, options)


def arm_config(context: RecipeContext, scale: Scale, corpus: Path, tokenizer: str) -> RunConfig:
    """The run config of one arm: the budget's model shape, trained for ``context.arm_seconds``."""
    config = RunConfig()
    config.model = dataclasses.replace(config.model, n_layer=scale.n_layer, n_head=scale.n_head, d_model=scale.d_model,
                                       context_length=scale.context_length, position=POSITION, dropout=0.0, bias=False)
    config.train = dataclasses.replace(
        config.train, batch_size=scale.batch_size, lr=scale.lr, min_lr=scale.lr / 10, warmup_steps=scale.warmup_steps,
        max_steps=10_000_000,
        max_time=context.arm_seconds, seed=context.seed, eval_every=200, eval_batches=10, checkpoint_every=500,
        sample_chars=0)
    config.data = dataclasses.replace(config.data, corpus=str(corpus.resolve()), tokenizer=tokenizer,
                                      val_fraction=0.05)
    return config


def _arm_runner(context: RecipeContext, scale: Scale, arm: str, config: RunConfig,
                held_out: list[ChessGame]) -> Callable[[Path, bool], dict[str, Any]]:
    def train(run_dir: Path, resume: bool) -> dict[str, Any]:
        trainer, _ = make_trainer(config, run_dir, resume=resume, progress=context.progress, echo=context.echo)
        fit = trainer.fit()
        run = load_run(run_dir, echo=context.echo, device=config.train.device)
        notation: Notation = PGNNotation(run.tokenizer) if arm == "pgn" else EnglishNotation(run.tokenizer)
        write_notation(run_dir, notation)
        context.echo(f"{arm}: judging its moves with python-chess")
        evaluation = evaluate_arm(run.model, notation, held_out, scale, context.seed)
        (run_dir / EVAL_FILE).write_text(json.dumps(evaluation) + "\n", encoding="utf-8")
        summary = {key: value for key, value in evaluation.items() if key not in ("positions", "self_play", "match")}
        tokens_per_ply = _tokens_per_ply(notation, held_out)
        val_loss = (fit.last_eval or {}).get("loss")
        return {
            "notation": notation.name, "vocab_size": run.tokenizer.vocab_size,
            "parameters": sum(p.numel() for p in run.model.parameters()), "steps": fit.step,
            "val_loss_per_token": val_loss, "tokens_per_ply": tokens_per_ply,
            "val_loss_per_ply": val_loss * tokens_per_ply if val_loss is not None else None,
            **summary,
            "positions": _without_records(evaluation["positions"]),
            "self_play": _without_records(evaluation["self_play"]),
            "match": _without_records(evaluation["match"]),
        }
    return train


def evaluate_arm(model: Any, notation: Notation, held_out: list[ChessGame], scale: Scale, seed: int) -> dict[str, Any]:
    """Everything the recipe measures of one model, with every position and game played."""
    greedy = MoveSampler(model, notation)
    positions = legal_move_rate(greedy, [g.moves for g in held_out], scale.positions, seed)
    games = self_play(MoveSampler(model, notation, SELF_PLAY_TEMPERATURE, seed), scale.self_play_games,
                      scale.self_play_plies)
    match = match_against_random(MoveSampler(model, notation, MATCH_TEMPERATURE, seed), scale.match_games,
                                 scale.match_plies, MATCH_RESAMPLE, seed)
    return {"legal_move_rate": positions["legal_move_rate"], "reach_move_40_share": games["reach_move_40_share"],
            "mean_plies_before_illegal": games["mean_plies_before_illegal"],
            "distinct_openings": games["distinct_openings"], "score_vs_random": match["score"],
            "positions": positions, "self_play": games, "match": match}


def _tokens_per_ply(notation: Notation, games: list[ChessGame]) -> float:
    """Tokens per move of ``games`` written in ``notation`` (move numbers and results included)."""
    lines = [g.movetext() if notation.name == "pgn" else g.english_line() for g in games]
    tokens = len(notation.tokenizer.encode("\n".join(lines)))
    return tokens / max(1, sum(len(g.moves) for g in games))


def _without_records(part: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in part.items() if key != "records"}


COLUMNS = ("arm", "vocab", "parameters", "steps", "val loss/ply", "legal moves", "reach move 40",
           "plies before illegal", "distinct openings", "score vs random")


def _report(context: RecipeContext, results: dict[str, dict[str, Any]], n_train: int, n_held_out: int,
            prepared_s: float, options: ChessOptions) -> RecipeReport:
    rows = [{"arm": arm, "vocab": r["vocab_size"], "parameters": r["parameters"], "steps": r["steps"],
             "val loss/ply": r["val_loss_per_ply"], "legal moves": f"{100 * r['legal_move_rate']:.1f}%",
             "reach move 40": f"{100 * r['reach_move_40_share']:.0f}%",
             "plies before illegal": r["mean_plies_before_illegal"], "distinct openings": r["distinct_openings"],
             "score vs random": r["score_vs_random"]} for arm, r in results.items()]
    gap = results["pgn"]["legal_move_rate"] - results["english"]["legal_move_rate"]
    summary = (f"{n_train} training games and {n_held_out} held-out games"
               + (f" from {context.val.name}" if context.val is not None else "")
               + (f" (both players rated {options.min_elo}+)" if options.min_elo else "")
               + f", written once as PGN movetext and once as English sentences ({prepared_s:.0f} s). "
               f"Legal moves: the greedy next move at {results['pgn']['positions']['positions']} positions of the "
               f"held-out games, judged by python-chess; PGN minus English: {100 * gap:+.1f} points. "
               "Validation loss is per move (per-token loss × tokens per move), comparable across the two vocabularies.")
    sections = [("Games against itself and against a random mover", _games_table(results)),
                ("Samples", _samples(context))]
    figures = [_curves(context)]
    commands = {arm: f"lmlab train --config {context.arm_dir(arm)}.yaml --out {context.arm_dir(arm)}" for arm in ARMS}
    return RecipeReport(title="Chess: PGN movetext versus English move descriptions", summary=summary,
                        columns=COLUMNS, rows=rows, sections=sections, commands=commands, figures=figures,
                        results={"arms": results, "train_games": n_train, "held_out_games": n_held_out,
                                 "min_elo": options.min_elo, "prepare_s": round(prepared_s, 2)})


def _games_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for arm, r in results.items():
        play, match = r["self_play"], r["match"]
        rows.append({"arm": arm, "self-play games": play["games"],
                     "self-play results": ", ".join(f"{k} {v}" for k, v in sorted(play["results"].items())),
                     "match results": ", ".join(f"{k} {v}" for k, v in sorted(match["results"].items())),
                     "illegal tries (resampled)": match["illegal_tries"], "forfeits": match["forfeits"]})
    note = (f"Self-play samples at temperature {SELF_PLAY_TEMPERATURE} and stops at the first illegal move; the match "
            f"samples at temperature {MATCH_TEMPERATURE}, the model playing White in half the games, resampling an "
            f"illegal move up to {MATCH_RESAMPLE} times before it forfeits; a game still going at the ply limit "
            "counts as a draw.")
    return markdown_table(list(rows[0]), rows) + "\n\n" + note


def _samples(context: RecipeContext) -> str:
    """The first self-play game of each arm in SAN, and a few wrong moves at held-out positions."""
    parts = []
    for arm in ARMS:
        evaluation = json.loads((context.arm_dir(arm) / EVAL_FILE).read_text(encoding="utf-8"))
        record = evaluation["self_play"]["records"][0]
        board, words = chess.Board(), []
        for ply, uci in enumerate(record["moves"]):
            move = chess.Move.from_uci(uci)
            words.append((f"{ply // 2 + 1}. " if ply % 2 == 0 else "") + board.san(move))
            board.push(move)
        ending = f" — then the illegal {record['illegal_text']!r}" if record["illegal_text"] is not None else ""
        parts.append(f"**{arm}**, a game against itself ({record['result']}): {' '.join(words) or '(no move)'}{ending}")
        wrong = [r for r in evaluation["positions"]["records"] if r["move"] is None][:3]
        if wrong:
            parts.append(f"**{arm}**, illegal moves at held-out positions: "
                         + "; ".join(f"`{r['text'] or '(nothing)'}` in {r['fen']}" for r in wrong))
    return "\n\n".join(parts)


def _curves(context: RecipeContext) -> str:
    curves = {}
    for arm in ARMS:
        lines = (context.arm_dir(arm) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        curves[f"{arm} (per token)"] = [r for r in records if r.get("kind") == "eval"]
    name = "curves.png"
    plot_validation_curves(curves, context.out_dir / name)
    return name


RECIPE = Recipe(
    name="chess",
    description="chess LM: PGN movetext vs English move descriptions, legal-move rate judged by python-chess",
    arm_seconds={"small": 40, "default": 240, "large": 3600},
    run=run_chess,
    source=DataSource(
        description="the Lichess database of rated standard games, January 2013 (CC0)",
        url="https://database.lichess.org/standard/lichess_db_standard_rated_2013-01.pgn.zst",
        sha256="aa40b3671fa3cf1072eb182892cd90b0e1e003a4a5943492f64b77e7f3fd1635",  # 17,761,302 bytes, 121,332 games
        filename="lichess_db_standard_rated_2013-01.pgn.zst",
        local_format="a .pgn or .pgn.zst file of games, or a directory of them",
    ),
    held_out_format="a .pgn or .pgn.zst file of held-out games, or a directory of them",
)
