"""A run's corpus becomes training and validation tokens without cutting a document in half."""

from __future__ import annotations

import pytest

from lmlab.training.config import RunConfig
from lmlab.training.run import token_splits

GAME = "1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 5. O-O Be7 6. Re1 b5 7. Bb3 d6 8. c3 O-O 9. h3 Kh8 1-0"


@pytest.mark.parametrize("name", ["games.txt", "games.pgn"])
def test_a_chess_model_trains_straight_from_a_movetext_file(tmp_path, name):
    """Regression: the 90/10 split cut a move ("cannot tokenize 'Kd'")."""
    pgn = name.endswith(".pgn")
    if pgn:
        pytest.importorskip("chess")
    corpus = tmp_path / name
    corpus.write_text((f"{GAME}\n\n" if pgn else f"{GAME}\n") * 37, encoding="utf-8")
    config = RunConfig()
    config.data.corpus, config.data.tokenizer = str(corpus), "chess-pgn"
    tokenizer, train, val = token_splits(config)
    assert len(train) > 0 and len(val) > 0
    val_ids = val.store[val.start:val.stop].tolist()
    assert tokenizer.decode(val_ids) == f"{GAME}\n" * 4
