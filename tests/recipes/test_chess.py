"""The chess recipe end to end on tiny games made here, every reported figure recomputed by
replaying the reported moves with python-chess; its data rules and bad inputs."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import chess
import chess.pgn
import pytest

from lmlab.data.readers import iter_pgn_games
from lmlab.errors import LmlabError
from lmlab.recipes import run_recipe
from lmlab.recipes.chess import SCALES, ChessOptions, run_chess_recipe, split_games
from lmlab.recipes.chess_english import describe_move
from lmlab.recipes.chess_eval import MOVE_40_PLIES, NOTATION_FILE, EnglishNotation, PGNNotation
from lmlab.tokenizers import ChessPGNTokenizer, load_tokenizer

METRICS = ("legal_move_rate", "reach_move_40_share", "mean_plies_before_illegal", "distinct_openings",
           "score_vs_random", "val_loss_per_ply", "parameters", "steps", "vocab_size")


def write_games(path: Path, games: int, plies: int, seed: int = 0, elo: int = 1500) -> Path:
    """``games`` random legal games (python-chess picks each move) as PGN with rating headers."""
    chooser = random.Random(seed)
    texts = []
    for number in range(games):
        board = chess.Board()
        while len(board.move_stack) < plies and not board.is_game_over():
            board.push(chooser.choice(sorted(board.legal_moves, key=chess.Move.uci)))
        game = chess.pgn.Game.from_board(board)
        game.headers["WhiteElo"], game.headers["BlackElo"] = str(elo + 10 * number), str(elo + 5 * number)
        texts.append(str(game))
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chess")
    data = write_games(tmp / "games.pgn", games=30, plies=60)
    report = run_recipe("chess", tmp / "out", data=data, max_time=2, budget="small", echo=lambda _: None)
    return report.parent, data


def _held_out_games(data: Path) -> list[list[chess.Move]]:
    """The recipe's rule for one file: the last tenth of the games is held out."""
    with open(data, encoding="utf-8") as handle:
        games = []
        while (game := chess.pgn.read_game(handle)) is not None:
            games.append(list(game.mainline_moves()))
    return games[len(games) - max(1, len(games) // 10):]


def test_report_has_every_arm_and_metric(recipe_run):
    out, _ = recipe_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"pgn", "english"}
    for arm in results["arms"].values():
        assert all(arm[name] is not None for name in METRICS)
    report = (out / "report.md").read_text()
    assert report.startswith("# Chess") and "| pgn |" in report and "| english |" in report
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for arm in ("pgn", "english"):
        assert (out / "arms" / f"{arm}.yaml").is_file()
        assert json.loads((out / "arms" / arm / NOTATION_FILE).read_text()) == {"notation": arm}


@pytest.mark.parametrize("arm", ["pgn", "english"])
def test_prompts_are_the_training_corpus_tokens_of_a_game_start(recipe_run, arm):
    """A prompt for the position after k moves is the corpus's token ids from a game's separator
    (the newline after the previous game) up to that position: the model sees its training text."""
    out, _ = recipe_run
    corpus = (out / "data" / f"{arm}-train.txt").read_text(encoding="utf-8").splitlines()
    game = split_games(out.parent / "games.pgn", SCALES["small"], min_elo=0)[0][1]
    assert (game.movetext() if arm == "pgn" else game.english_line()) == corpus[1]
    if arm == "pgn":
        tokenizer, notation, written = ChessPGNTokenizer(), PGNNotation(ChessPGNTokenizer()), game.sans
    else:
        tokenizer = load_tokenizer(out / "data" / "english-tokenizer")
        notation, written = EnglishNotation(tokenizer), game.english
    stream = tokenizer.encode(corpus[0] + "\n" + corpus[1] + "\n")
    start = len(tokenizer.encode(corpus[0]))  # the separator ending the first game
    for plies in (0, 1, 2, 7):
        prompt = notation.prompt_ids(written[:plies])
        assert prompt == stream[start:start + len(prompt)], plies
        assert len(prompt) > plies


def _evaluation(out: Path, arm: str) -> dict:
    return json.loads((out / "arms" / arm / "chess-eval.json").read_text())


@pytest.mark.parametrize("arm", ["pgn", "english"])
def test_legal_move_rate_recomputed_by_replay(recipe_run, arm):
    out, data = recipe_run
    held_out = _held_out_games(data)
    positions = _evaluation(out, arm)["positions"]
    assert positions["positions"] == min(SCALES["small"].positions, sum(len(g) for g in held_out))
    legal = 0
    for record in positions["records"]:
        board = chess.Board()
        for move in held_out[record["game"]][:record["ply"]]:
            board.push(move)
        assert board.fen() == record["fen"]
        if arm == "pgn":
            try:
                expected = board.parse_san(record["text"]).uci()
            except ValueError:
                expected = None
            assert record["move"] == expected
        elif record["move"] is not None:
            assert board.is_legal(chess.Move.from_uci(record["move"]))
        else:  # no legal move is written this way
            assert all(describe_move(board, move) != record["text"] for move in board.legal_moves)
        legal += record["move"] is not None
    assert positions["legal_move_rate"] == pytest.approx(legal / len(positions["records"]))
    results = json.loads((out / "results.json").read_text())
    assert results["arms"][arm]["legal_move_rate"] == positions["legal_move_rate"]


def _replay(moves: list[str]) -> chess.Board:
    board = chess.Board()
    for uci in moves:
        move = chess.Move.from_uci(uci)
        assert board.is_legal(move)
        board.push(move)
    return board


@pytest.mark.parametrize("arm", ["pgn", "english"])
def test_self_play_figures_recomputed_by_replay(recipe_run, arm):
    out, _ = recipe_run
    games = _evaluation(out, arm)["self_play"]
    records = games["records"]
    assert len(records) == SCALES["small"].self_play_games
    plies_before_illegal, clean = [], []
    for record in records:
        board = _replay(record["moves"])
        if record["result"] == "illegal":
            assert record["first_illegal_ply"] == len(record["moves"]) and not board.is_game_over()
        elif board.is_game_over():
            assert record["result"] == board.result()
        else:
            assert record["result"] == "unfinished" and len(record["moves"]) == SCALES["small"].self_play_plies
        first = record["first_illegal_ply"]
        plies_before_illegal.append(len(record["moves"]))
        clean.append(first is None or first >= MOVE_40_PLIES)
    assert games["mean_plies_before_illegal"] == pytest.approx(sum(plies_before_illegal) / len(records))
    assert games["reach_move_40_share"] == pytest.approx(sum(clean) / len(records))
    assert games["results"] == dict(Counter(r["result"] for r in records))
    openings = {tuple(r["moves"][:4]) for r in records if len(r["moves"]) >= 4}
    assert games["distinct_openings"] == len(openings)


@pytest.mark.parametrize("arm", ["pgn", "english"])
def test_match_score_recomputed_by_replay(recipe_run, arm):
    out, _ = recipe_run
    match = _evaluation(out, arm)["match"]
    points = 0.0
    for number, record in enumerate(match["records"]):
        model = chess.WHITE if number % 2 == 0 else chess.BLACK
        assert record["model_color"] == ("white" if model else "black")
        board = _replay(record["moves"])
        if record["result"] == "forfeit":
            assert board.turn == model and not board.is_game_over()
        elif board.is_game_over():
            assert record["result"] == board.result()
            outcome = board.outcome()
            points += 0.5 if outcome.winner is None else float(outcome.winner == model)
        else:
            points += 0.5
    assert match["score"] == pytest.approx(points / len(match["records"]))


def test_movetext_is_python_chess_export_and_val_files_are_held_out(tmp_path):
    data = tmp_path / "games"
    data.mkdir()
    write_games(data / "train.pgn", games=6, plies=20, seed=1)
    write_games(data / "val.pgn", games=3, plies=20, seed=2)
    train, held_out = split_games(data, SCALES["small"], min_elo=0)
    assert [g.movetext() for g in train] == [g.movetext for g in iter_pgn_games(data / "train.pgn")]
    assert [g.movetext() for g in held_out] == [g.movetext for g in iter_pgn_games(data / "val.pgn")]


def test_val_names_the_held_out_games_and_every_data_game_trains(tmp_path):
    data = write_games(tmp_path / "train.pgn", games=8, plies=20, seed=1)
    val = write_games(tmp_path / "other-val.pgn", games=3, plies=20, seed=2)
    train, held_out = split_games(data, SCALES["small"], min_elo=0, val=val)
    assert [g.movetext() for g in train] == [g.movetext for g in iter_pgn_games(data)]
    assert [g.movetext() for g in held_out] == [g.movetext for g in iter_pgn_games(val)]


def test_val_that_is_not_pgn_is_one_line(tmp_path):
    data = write_games(tmp_path / "games.pgn", games=6, plies=10)
    val = tmp_path / "val.csv"
    val.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"\.pgn or \.pgn\.zst") as error:
        run_recipe("chess", tmp_path / "out", data=data, val=val, max_time=2, budget="small", echo=lambda _: None)
    assert "\n" not in str(error.value)


def test_pgn_zst_reads_like_pgn(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    plain = write_games(tmp_path / "games.pgn", games=10, plies=20)
    packed = tmp_path / "games.pgn.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    train, held_out = split_games(packed, SCALES["small"], min_elo=0)
    expected_train, expected_held_out = split_games(plain, SCALES["small"], min_elo=0)
    assert [g.movetext() for g in train + held_out] == [g.movetext() for g in expected_train + expected_held_out]
    assert len(held_out) == 1


def test_min_elo_keeps_games_whose_both_players_reach_it(tmp_path):
    data = write_games(tmp_path / "games.pgn", games=20, plies=10, elo=1500)
    with open(data, encoding="utf-8") as handle:
        headers = [chess.pgn.read_headers(handle) for _ in range(20)]
    kept = [h for h in headers if int(h["WhiteElo"]) >= 1550 and int(h["BlackElo"]) >= 1550]
    train, held_out = split_games(data, SCALES["small"], min_elo=1550)
    assert 0 < len(kept) < 20 and len(train) + len(held_out) == len(kept)


def test_an_empty_split_after_min_elo_is_one_line(tmp_path):
    data = write_games(tmp_path / "games.pgn", games=6, plies=10, elo=1500)
    with pytest.raises(LmlabError, match="no training games with both players rated 3000") as error:
        run_chess_recipe(tmp_path / "out", options=ChessOptions(min_elo=3000), data=data, max_time=2,
                         budget="small", echo=lambda _: None)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("content", "says"), [
    ("", "holds no chess games"),
    ("% only a comment\n", "holds no chess games"),
    ('[Event "x"]\n\n1. e4 e5 2. Ke3 *\n', "game 1"),
])
def test_bad_pgn_is_one_line(tmp_path, content, says):
    data = tmp_path / "games.pgn"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(LmlabError, match=says) as error:
        run_recipe("chess", tmp_path / "out", data=data, max_time=2, budget="small", echo=lambda _: None)
    assert "\n" not in str(error.value)


def test_data_that_is_not_pgn_is_one_line(tmp_path):
    data = tmp_path / "games.csv"
    data.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"\.pgn or \.pgn\.zst"):
        run_recipe("chess", tmp_path / "out", data=data, max_time=2, budget="small", echo=lambda _: None)


def test_one_game_cannot_be_split(tmp_path):
    data = write_games(tmp_path / "games.pgn", games=1, plies=10)
    with pytest.raises(LmlabError, match="at least two games"):
        run_recipe("chess", tmp_path / "out", data=data, max_time=2, budget="small", echo=lambda _: None)
