"""Task-data readers: text pairs and labelled texts from TSV/CSV/JSONL, chess games from PGN."""

from __future__ import annotations

import io
import json
from itertools import islice
from pathlib import Path

import chess
import chess.pgn
import pytest
import zstandard

from lmlab.data.readers import (
    PGNGame,
    TextPair,
    iter_pgn_games,
    read_labelled_texts,
    read_text_pairs,
)
from lmlab.errors import LmlabError
from lmlab.tokenizers import ChessPGNTokenizer

SHARED_VAL_PGN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chess" / "selfplay-val.pgn"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------ text pairs
def test_pairs_from_tsv_with_header(tmp_path):
    path = write(tmp_path / "p.tsv", "en\tde\nHello\tHallo\n\nGood \"day\"\tGuten Tag\n")
    assert read_text_pairs(path, "en", "de") == [
        TextPair("Hello", "Hallo"),
        TextPair('Good "day"', "Guten Tag"),
    ]


def test_pairs_from_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path / "p.csv", 'source,target\n"a long, long text","short"\nx,y\n')
    assert read_text_pairs(path) == [TextPair("a long, long text", "short"), TextPair("x", "y")]


def test_pairs_from_jsonl_with_custom_fields(tmp_path):
    lines = [{"article": "Long text.", "summary": "Short."}, {"article": "B", "summary": "b"}]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert read_text_pairs(path, "article", "summary") == [("Long text.", "Short."), ("B", "b")]


def test_pairs_without_header_use_column_indices(tmp_path):
    path = write(tmp_path / "p.txt", "1\tone\teins\n2\ttwo\tzwei\n")
    assert read_text_pairs(path, format="tsv", header=False) == [("1", "one"), ("2", "two")]
    assert read_text_pairs(path, 1, "2", format="tsv", header=False) == [
        ("one", "eins"), ("two", "zwei"),
    ]
    with pytest.raises(LmlabError, match="without a header row, name columns by 0-based index"):
        read_text_pairs(path, "en", "de", format="tsv", header=False)


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("p.tsv", "en\tde\nhi\tho\n", r"line 2: no column 'source' \(available: 'en', 'de'\)"),
        ("p.tsv", "source\ttarget\nhi\n", "line 2: 1 columns but the header has 2"),
        ("p.jsonl", '{"source": "a", "target": "b"}\n{"source": "a",\n', "line 2: malformed JSON"),
        ("p.jsonl", '["a", "b"]\n', "line 1: expected a JSON object, got list"),
        ("p.jsonl", '{"source": "a", "target": 3}\n', "line 1: 'target' must be text, got int"),
        ("p.jsonl", '{"source": "a"}\n', "line 1: no column 'target'"),
        ("p.tsv", "", "is empty"),
        ("p.tsv", "source\ttarget\n\n", "holds no examples"),
        ("p.xml", "<a/>", "cannot tell the format"),
        ("p.csv", 'source,target\n"a\n', "malformed row"),
    ],
)
def test_pair_errors(tmp_path, name, text, message):
    with pytest.raises(LmlabError, match=message):
        read_text_pairs(write(tmp_path / name, text))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(LmlabError, match="no such file"):
        read_text_pairs(tmp_path / "nope.tsv")
    (tmp_path / "bad.tsv").write_bytes(b"source\ttarget\n\xff\tx\n")
    with pytest.raises(LmlabError, match="not UTF-8"):
        read_text_pairs(tmp_path / "bad.tsv")


# ------------------------------------------------------------------------ labelled texts
def test_labels_are_sorted_and_mapped_to_ids(tmp_path):
    path = write(tmp_path / "l.csv", "text,label\ngreat,pos\nawful,neg\nfine,neutral\nbad,neg\n")
    data = read_labelled_texts(path)
    assert data.texts == ["great", "awful", "fine", "bad"]
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.labels == [2, 0, 1, 0]
    assert data.label_to_id == {"neg": 0, "neutral": 1, "pos": 2} and len(data) == 4


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"sentence": f"s{i}", "y": y} for i, y in enumerate([10, 2, 1, 2])]
    path = write(tmp_path / "l.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = read_labelled_texts(path, "sentence", "y")
    assert data.label_names == ["1", "2", "10"] and data.labels == [2, 1, 0, 1]


def test_given_label_names_fix_the_order(tmp_path):
    path = write(tmp_path / "l.tsv", "good\tpos\nbad\tneg\n")
    data = read_labelled_texts(path, header=False, label_names=["pos", "neg", "other"])
    assert data.labels == [0, 1] and data.label_names == ["pos", "neg", "other"]
    with pytest.raises(LmlabError, match="line 2: label 'neg' is not one of the label names"):
        read_labelled_texts(path, header=False, label_names=["pos"])


def test_label_of_the_wrong_type(tmp_path):
    path = write(tmp_path / "l.jsonl", '{"text": "a", "label": true}\n')
    with pytest.raises(LmlabError, match="line 1: label 'label' must be a string or an integer"):
        read_labelled_texts(path)


# ------------------------------------------------------------------------ chess games
def game_with_extras() -> chess.pgn.Game:
    """A game with headers, a comment, a NAG, a variation and a promotion."""
    board = chess.Board("8/P6k/8/8/8/8/6K1/8 w - - 0 1")
    game = chess.pgn.Game.from_board(board)
    game.headers["White"] = "Alice"
    node = game.add_main_variation(chess.Move.from_uci("a7a8q"), comment="queening")
    node.nags.add(chess.pgn.NAG_GOOD_MOVE)
    game.add_variation(chess.Move.from_uci("a7a8n"))
    node.add_main_variation(chess.Move.from_uci("h7g6"))
    return game


def scholars_mate() -> chess.pgn.Game:
    board = chess.Board()
    for san in ("e4", "e5", "Qh5", "Nc6", "Bc4", "Nf6", "Qxf7#"):
        board.push_san(san)
    return chess.pgn.Game.from_board(board)


def pgn_text() -> str:
    return f"{game_with_extras()}\n\n{scholars_mate()}\n\n"


EXPECTED_MOVETEXTS = ["1. a8=Q Kg6 *", "1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0"]


def test_pgn_games_become_movetext_the_chess_tokenizer_round_trips(tmp_path):
    games = list(iter_pgn_games(write(tmp_path / "g.pgn", pgn_text())))
    assert [g.movetext for g in games] == EXPECTED_MOVETEXTS
    assert all(g.headers == {} for g in games)
    tok = ChessPGNTokenizer()
    for game in games:
        assert tok.decode(tok.encode(game.movetext)) == game.movetext
    joined = "\n".join(g.movetext for g in games)
    assert tok.decode(tok.encode(joined)) == joined


def test_pgn_zst_and_kept_headers(tmp_path):
    path = tmp_path / "g.pgn.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(pgn_text().encode()))
    games = list(iter_pgn_games(path, keep_headers=True))
    assert [g.movetext for g in games] == EXPECTED_MOVETEXTS
    assert games[0].headers["White"] == "Alice" and games[1].headers["Result"] == "1-0"
    assert isinstance(games[0], PGNGame)


def test_pgn_errors(tmp_path):
    with pytest.raises(LmlabError, match="holds no chess games"):
        list(iter_pgn_games(write(tmp_path / "empty.pgn", "")))
    bad = write(tmp_path / "bad.pgn", f"{scholars_mate()}\n\n1. e4 e5 2. Ke4 *\n")
    with pytest.raises(LmlabError, match="game 2: .*Ke4"):
        list(iter_pgn_games(bad))
    with pytest.raises(LmlabError, match="expected a .pgn or .pgn.zst file"):
        list(iter_pgn_games(write(tmp_path / "g.txt", "1. e4 *")))
    with pytest.raises(LmlabError, match="no such file"):
        list(iter_pgn_games(tmp_path / "missing.pgn"))


@pytest.mark.skipif(not SHARED_VAL_PGN.is_file(), reason="no shared chess data")
def test_shared_games_round_trip(tmp_path):
    tok = ChessPGNTokenizer()
    reader = io.StringIO(SHARED_VAL_PGN.read_text())
    for index, game in enumerate(islice(iter_pgn_games(SHARED_VAL_PGN), 100)):
        assert tok.decode(tok.encode(game.movetext)) == game.movetext
        if index < 20:
            expected = chess.pgn.read_game(reader)
            replayed = chess.pgn.read_game(io.StringIO(game.movetext))
            assert list(replayed.mainline_moves()) == list(expected.mainline_moves())
