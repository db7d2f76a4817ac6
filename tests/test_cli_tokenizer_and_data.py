"""The ``lmlab tokenizer train|encode|decode`` and ``lmlab data prepare`` commands."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.data.shards import ShardedTokens
from lmlab.tokenizers import HFTokenizer, load_pretrained_tokenizer

WORDS = "a bb ccc dddd the quick brown fox naïve café".split()
LINES = ["Hello there, fox.", "", "  the naïve café  ", "日本 quick"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(1, 10))) for _ in range(300)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(monkeypatch, capsys, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_train_encode_decode_round_trip(tmp_path, monkeypatch, capsys, corpus, kind):
    out = tmp_path / "tok"
    code, stdout, _ = run(monkeypatch, capsys, [
        "tokenizer", "train", "--kind", kind, "--vocab-size", "300", "--data", str(corpus),
        "--min-frequency", "1", "--out", str(out),
    ])
    assert code == 0
    tokenizer = load_pretrained_tokenizer(out)
    assert json.loads(stdout) == {"out": str(out), "kind": kind, "vocab_size": tokenizer.vocab_size}
    assert tokenizer.vocab_size <= 300  # at most: the small corpus may have fewer merges to learn
    assert HFTokenizer.from_file(out / "tokenizer.json").vocab_size == tokenizer.vocab_size

    code, ids, _ = run(monkeypatch, capsys, ["tokenizer", "encode", "--tokenizer", str(out)],
                       "\n".join(LINES) + "\n")
    assert code == 0
    assert ids.splitlines() == [" ".join(map(str, tokenizer.encode(line))) for line in LINES]

    code, text, _ = run(monkeypatch, capsys, ["tokenizer", "decode", "--tokenizer", str(out)], ids)
    assert code == 0
    expected = LINES if kind == "bpe" else [tokenizer.decode(tokenizer.encode(x)) for x in LINES]
    assert text.splitlines() == expected


def test_train_from_a_directory_spec(tmp_path, monkeypatch, capsys, corpus):
    code, stdout, _ = run(monkeypatch, capsys, [
        "tokenizer", "train", "--vocab-size", "280", "--data", str(corpus.parent),
        "--out", str(tmp_path / "tok"),
    ])
    assert code == 0 and json.loads(stdout)["vocab_size"] == 280


def test_chess_tokenizer_by_name(monkeypatch, capsys):
    movetext = "1. e4 e5 2. Nf3 Nc6 1-0"
    code, ids, _ = run(monkeypatch, capsys, ["tokenizer", "encode", "--tokenizer", "chess-pgn"],
                       movetext + "\n")
    assert code == 0
    code, text, _ = run(monkeypatch, capsys, ["tokenizer", "decode", "--tokenizer", "chess-pgn"], ids)
    assert text == movetext + "\n"


@pytest.mark.parametrize(
    "argv,stdin,message",
    [
        (["tokenizer", "decode", "--tokenizer", "chess-pgn"], "1 2 x\n", "stdin line 1 is not"),
        (["tokenizer", "encode", "--tokenizer", "chess-pgn"], "hello\n", "cannot tokenize 'hello'"),
        (["tokenizer", "encode", "--tokenizer", "/nowhere"], "", "tokenizer '/nowhere' does not exist"),
        (["tokenizer", "train", "--vocab-size", "10", "--data", "/nowhere", "--out", "x"], "",
         "no corpus named /nowhere"),
        (["tokenizer", "frobnicate"], "", "invalid choice"),
        (["data", "prepare", "--tokenizer", "chess-pgn", "--data", "/nowhere.txt", "--out", "x"], "",
         "no such file, directory or glob"),
    ],
)
def test_mistakes_exit_with_code_2(monkeypatch, capsys, argv, stdin, message):
    code, _, err = run(monkeypatch, capsys, argv, stdin)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_data_prepare(tmp_path, monkeypatch, capsys, corpus):
    tok_dir = tmp_path / "tok"
    run(monkeypatch, capsys, ["tokenizer", "train", "--vocab-size", "300", "--data", str(corpus),
                              "--out", str(tok_dir)])
    second = tmp_path / "second.txt"
    second.write_text("one more document\n", encoding="utf-8")
    out = tmp_path / "shards"
    code, stdout, _ = run(monkeypatch, capsys, [
        "data", "prepare", "--tokenizer", str(tok_dir), "--data", str(corpus), str(second),
        "--out", str(out), "--shard-tokens", "500",
    ])
    assert code == 0
    summary = json.loads(stdout)
    tokens = ShardedTokens.open(out)
    assert summary["tokens"] == len(tokens) and summary["documents"] == 2
    assert summary["shards"] == -(-len(tokens) // 500) and summary["dtype"] == "uint16"
    assert summary["mb_per_s"] > 0
    decoded = tokens.tokenizer().decode(tokens.window(0, len(tokens)).tolist())
    assert decoded == corpus.read_text(encoding="utf-8") + "</s>" + "one more document\n"


def test_data_prepare_lines_without_separator(tmp_path, monkeypatch, capsys):
    games = tmp_path / "games.txt"
    games.write_text("1. e4 e5 1-0\n\n1. d4 *\n")
    code, stdout, _ = run(monkeypatch, capsys, [
        "data", "prepare", "--tokenizer", "chess-pgn", "--data", str(games), "--out",
        str(tmp_path / "out"), "--documents", "line", "--separator", "none",
    ])
    assert code == 0 and json.loads(stdout)["documents"] == 2
    tokens = ShardedTokens.open(tmp_path / "out")
    assert tokens.tokenizer().decode(tokens.window(0, len(tokens)).tolist()) == "1. e4 e5 1-0 1. d4 *"


# ------------------------------------------------- every pretrained format through --tokenizer / data.tokenizer


def _wordpiece_file(folder: Path) -> Path:
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return folder / "vocab.txt"


def _byte_level_file(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(LINES * 5 + WORDS, trainer)
    backend.model.save(str(folder))
    return folder / "merges.txt"


def _gguf_file(folder: Path) -> Path:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    tokens = ["<|endoftext|>", *sorted({chr(c) for c in range(33, 127)} | {"Ġ"}), "Ġa"]
    writer = gguf.GGUFWriter(str(folder / "model.gguf"), "llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "smollm")
    writer.add_array("tokenizer.ggml.tokens", tokens)
    writer.add_array("tokenizer.ggml.merges", ["Ġ a"])
    writer.add_array("tokenizer.ggml.token_type", [3] + [1] * (len(tokens) - 1))
    writer.add_uint32("tokenizer.ggml.eos_token_id", 0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return folder / "model.gguf"


@pytest.mark.parametrize("make", [_wordpiece_file, _byte_level_file, _gguf_file], ids=["vocab.txt", "merges.txt", "gguf"])
def test_every_pretrained_format_through_the_flag_and_the_config_key(tmp_path, monkeypatch, capsys, make):
    from lmlab.training.config import RunConfig
    from lmlab.training.run import build_tokenizer

    file = make(tmp_path)
    expected = load_pretrained_tokenizer(file)
    text = "the quick fox 42"
    for given in (file, tmp_path) if file.suffix != ".gguf" else (file,):
        code, out, err = run(monkeypatch, capsys, ["tokenizer", "encode", "--tokenizer", str(given)], text + "\n")
        assert (code, err) == (0, "")
        assert out.split() == [str(i) for i in expected.encode(text)]
    config = RunConfig()
    config.data.tokenizer = str(file)
    assert build_tokenizer(config, "").encode(text) == expected.encode(text)
