"""Token shards: round trips, dtype choice, windows across shard boundaries, corrupt indexes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data import shards, windows
from lmlab.data.shards import (
    INDEX_FILE,
    ShardedTokens,
    prepare_shards,
    token_dtype,
)
from lmlab.errors import LmlabError
from lmlab.tokenizers import (
    CharTokenizer,
    ChessPGNTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

SHARED_TINY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"
WORDS = "the quick brown fox jumps over lazy dogs while seven wizards quietly hex jovial kings".split()


def synthetic_text(seed: int, lines: int) -> str:
    """Lines of random words, with blank lines, indentation and some non-ASCII."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.1:
            out.append("\n")
        else:
            indent = "    " if kind < 0.2 else ""
            words = rng.choices(WORDS + ["naïve", "café", "日本"], k=rng.randint(1, 12))
            out.append(indent + " ".join(words) + rng.choice([".\n", "!\n", ",\n"]))
    return "".join(out)


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_tokenizer("bpe", iter([synthetic_text(0, 400)]), 320)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def all_tokens(directory: Path) -> list[int]:
    tokens = ShardedTokens.open(directory)
    return tokens.window(0, len(tokens)).tolist()


# ------------------------------------------------------------------------ round trips
def test_files_round_trip_with_eos_between_documents(tmp_path, bpe):
    texts = [synthetic_text(1, 120), synthetic_text(2, 80) + "no final newline"]
    files = [write(tmp_path / f"{i}.txt", text) for i, text in enumerate(texts)]
    index = prepare_shards(bpe, files, tmp_path / "out", shard_tokens=100, batch_docs=3)
    ids = all_tokens(tmp_path / "out")
    assert bpe.decode(ids) == texts[0] + "</s>" + texts[1]
    assert ids.count(bpe.special_tokens["eos"]) == 1
    assert index.documents == 2 and index.separator_id == bpe.special_tokens["eos"]
    assert index.dtype == "uint16" and index.vocab_size == bpe.vocab_size
    assert index.total_tokens == len(ids) and len(index.shards) == -(-len(ids) // 100)
    assert all(shard.tokens == 100 for shard in index.shards[:-1])
    assert index.source_bytes == sum(f.stat().st_size for f in files)
    stored = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    assert stored["total_tokens"] == len(ids) and stored["tokenizer_kind"] == "hf"
    assert load_tokenizer(tmp_path / "out").encode("hello dogs") == bpe.encode("hello dogs")
    assert ShardedTokens.open(tmp_path / "out").tokenizer().vocab_size == bpe.vocab_size


def test_char_tokenizer_without_separator_round_trips(tmp_path):
    text = synthetic_text(3, 50)
    tok = CharTokenizer.from_text(text)
    directory = tmp_path / "dir"
    directory.mkdir()
    write(directory / "a.txt", text[:500])
    write(directory / "b.txt", text[500:])
    write(directory / ".hidden.txt", "ignored")
    index = prepare_shards(tok, directory, tmp_path / "out", doc_separator=None)
    assert tok.decode(all_tokens(tmp_path / "out")) == text
    assert index.documents == 2 and index.separator_id is None


def test_separator_needs_an_eos_token(tmp_path):
    tok = CharTokenizer.from_text("abc\n")
    with pytest.raises(LmlabError, match="no eos token.*doc_separator=None"):
        prepare_shards(tok, write(tmp_path / "a.txt", "abc\n"), tmp_path / "out")


def test_line_documents_drop_line_breaks_and_blank_lines(tmp_path, bpe):
    text = "first line\n\n  \nsecond line\r\nthird"
    index = prepare_shards(bpe, write(tmp_path / "a.txt", text), tmp_path / "out", documents="line")
    eos = bpe.special_tokens["eos"]
    expected = bpe.encode("first line") + [eos] + bpe.encode("  ") + [eos]
    expected += bpe.encode("second line") + [eos] + bpe.encode("third")
    assert all_tokens(tmp_path / "out") == expected
    assert index.documents == 4


def test_long_lines_are_read_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_MAX_PIECE_CHARS", 7)
    monkeypatch.setattr(shards, "_CHUNK_CHARS", 5)
    text = "a long line of text\nshort\n\nanother quite long one"
    tok = CharTokenizer.from_text(text + "|")
    prepare_shards(tok, write(tmp_path / "a.txt", text), tmp_path / "file", doc_separator=None)
    assert tok.decode(all_tokens(tmp_path / "file")) == text
    index = prepare_shards(tok, [tmp_path / "a.txt"], tmp_path / "line", doc_separator=None,
                           documents="line")
    assert tok.decode(all_tokens(tmp_path / "line")) == text.replace("\n", "")
    assert index.documents == 3


def test_batched_parallel_encoding_equals_per_text_encoding(tmp_path, bpe, monkeypatch):
    lines = synthetic_text(4, 300).splitlines(keepends=True)
    assert bpe.encode_batch(lines) == [bpe.encode(line) for line in lines]
    path = write(tmp_path / "a.txt", "".join(lines))
    prepare_shards(bpe, path, tmp_path / "batched", batch_docs=64)
    monkeypatch.setattr(HFTokenizer, "encode_batch", Tokenizer.encode_batch)
    prepare_shards(bpe, path, tmp_path / "per-text", batch_docs=1)
    assert all_tokens(tmp_path / "batched") == all_tokens(tmp_path / "per-text")


def test_pgn_files_become_one_game_per_line(tmp_path):
    pgn = '[Event "x"]\n[Result "1-0"]\n\n1. e4 {best} e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0\n\n'
    pgn += '[Event "y"]\n\n1. d4 d5 (1... Nf6) 2. c4 *\n'
    tok = ChessPGNTokenizer()
    index = prepare_shards(tok, write(tmp_path / "games.pgn", pgn), tmp_path / "out")
    expected = "1. e4 e5 2. Qh5 Nc6 3. Bc4 Nf6 4. Qxf7# 1-0\n1. d4 d5 2. c4 *\n"
    assert tok.decode(all_tokens(tmp_path / "out")) == expected
    assert index.documents == 1


@pytest.mark.skipif(not SHARED_TINY.is_file(), reason="no shared tinyshakespeare")
def test_named_corpus_from_the_cache(tmp_path, monkeypatch, bpe):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    shutil.copy(SHARED_TINY, tmp_path / "cache" / "tinyshakespeare.txt")
    tok = CharTokenizer.from_text(SHARED_TINY.read_text())
    index = prepare_shards(tok, "tinyshakespeare", tmp_path / "out", doc_separator=None)
    assert tok.decode(all_tokens(tmp_path / "out")) == SHARED_TINY.read_text()
    assert index.source == "tinyshakespeare" and index.source_bytes == SHARED_TINY.stat().st_size


def test_rerun_replaces_stale_shards(tmp_path):
    tok = CharTokenizer.from_text("ab")
    prepare_shards(tok, write(tmp_path / "a.txt", "ab" * 50), tmp_path / "out", shard_tokens=10,
                   doc_separator=None)
    assert len(list((tmp_path / "out").glob("shard-*.bin"))) == 10
    prepare_shards(tok, write(tmp_path / "a.txt", "ba" * 5), tmp_path / "out", shard_tokens=10,
                   doc_separator=None)
    assert [p.name for p in (tmp_path / "out").glob("shard-*.bin")] == ["shard-00000.bin"]
    assert tok.decode(all_tokens(tmp_path / "out")) == "ba" * 5


# ------------------------------------------------------------------------ dtype
class BigVocabChars(CharTokenizer):
    """A character tokenizer that claims a vocabulary too big for uint16."""

    @property
    def vocab_size(self) -> int:
        return 70_000


def test_dtype_is_uint16_when_the_vocabulary_fits_else_uint32(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    tok = BigVocabChars.from_text("hello world")
    index = prepare_shards(tok, write(tmp_path / "a.txt", "hello world"), tmp_path / "out",
                           doc_separator=None)
    assert index.dtype == "uint32"
    assert (tmp_path / "out" / index.shards[0].file).stat().st_size == 4 * 11
    assert tok.decode(all_tokens(tmp_path / "out")) == "hello world"


def test_ids_outside_the_dtype_are_an_error(tmp_path):
    class Lying(CharTokenizer):
        def encode(self, text: str) -> list[int]:
            return [70_000]

    with pytest.raises(LmlabError, match="outside its vocabulary 0..0"):
        prepare_shards(Lying.from_text("a"), write(tmp_path / "a.txt", "a"), tmp_path / "out",
                       doc_separator=None)


# ------------------------------------------------------------------------ windows
@pytest.fixture
def sharded(tmp_path) -> tuple[ShardedTokens, torch.Tensor]:
    """103 tokens in shards of 10; returns the shards and the same tokens as one tensor."""
    text = "".join(chr(ord("a") + i % 26) for i in range(103))
    tok = CharTokenizer.from_text(text)
    prepare_shards(tok, write(tmp_path / "a.txt", text), tmp_path / "out", shard_tokens=10,
                   doc_separator=None)
    return ShardedTokens.open(tmp_path / "out"), torch.tensor(tok.encode(text), dtype=torch.int32)


def test_windows_cross_shard_boundaries(sharded):
    tokens, flat = sharded
    assert len(tokens) == 103 and len(tokens.index.shards) == 11
    for start in range(0, 103, 3):
        for length in (0, 1, 9, 10, 11, 25, 103 - start):
            if start + length <= 103:
                window = tokens.window(start, length)
                assert window.dtype == torch.int64
                assert torch.equal(window, flat[start : start + length].long())


def test_random_windows_match_the_in_memory_contract(sharded):
    tokens, flat = sharded
    for length in (1, 9, 10, 30, 102):
        got = windows.random_windows(tokens, 8, length, torch.Generator().manual_seed(length))
        want = windows.random_windows(flat, 8, length, torch.Generator().manual_seed(length))
        assert got.shape == (8, length + 1) and got.dtype == torch.int64
        assert torch.equal(got, want)


@pytest.mark.parametrize("length,batch_size", [(1, 7), (10, 3), (11, 2), (50, 4), (101, 1), (102, 2)])
def test_sequential_windows_match_the_in_memory_contract(sharded, length, batch_size):
    tokens, flat = sharded
    got = list(windows.sequential_windows(tokens, batch_size, length))
    want = list(windows.sequential_windows(flat, batch_size, length))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_window_errors(sharded):
    tokens, _ = sharded
    with pytest.raises(LmlabError, match="outside the 103 tokens"):
        tokens.window(100, 4)
    with pytest.raises(LmlabError, match="outside"):
        tokens.window(-1, 2)
    with pytest.raises(LmlabError, match="103 tokens but one window needs 104"):
        windows.random_windows(tokens, 2, 103, torch.Generator())


# ------------------------------------------------------------------------ corrupt directories
@pytest.fixture
def prepared(tmp_path) -> Path:
    tok = CharTokenizer.from_text("abc")
    prepare_shards(tok, write(tmp_path / "a.txt", "abc" * 20), tmp_path / "out", shard_tokens=25,
                   doc_separator=None)
    return tmp_path / "out"


def edit_index(directory: Path, **changes) -> None:
    path = directory / INDEX_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_index(tmp_path):
    with pytest.raises(LmlabError, match="no index.json in .*lmlab data prepare"):
        ShardedTokens.open(tmp_path)


def test_index_that_is_not_json(prepared):
    (prepared / INDEX_FILE).write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        ShardedTokens.open(prepared)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dtype": "float32"}, "unknown dtype"),
        ({"total_tokens": 61}, "does not match"),
        ({"version": 99}, "index version 99"),
        ({"shards": "nope"}, "not a valid shard index"),
        ({"separator_id": "x"}, "separator_id"),
    ],
)
def test_malformed_index(prepared, changes, message):
    edit_index(prepared, **changes)
    with pytest.raises(LmlabError, match=message):
        ShardedTokens.open(prepared)


def test_missing_key_in_index(prepared):
    data = json.loads((prepared / INDEX_FILE).read_text())
    del data["vocab_size"]
    (prepared / INDEX_FILE).write_text(json.dumps(data))
    with pytest.raises(LmlabError, match="not a valid shard index.*vocab_size"):
        ShardedTokens.open(prepared)


def test_truncated_or_missing_shard(prepared):
    shard = prepared / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(LmlabError, match="shard-00001.bin has 48 bytes but the index expects 50"):
        ShardedTokens.open(prepared)
    shard.unlink()
    with pytest.raises(LmlabError, match="shard-00001.bin is missing"):
        ShardedTokens.open(prepared)


def test_failed_prepare_leaves_no_index(prepared, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\n")
    with pytest.raises(LmlabError, match="not UTF-8"):
        prepare_shards(CharTokenizer.from_text("abc\n"), tmp_path / "bad.txt", prepared,
                       doc_separator=None)
    with pytest.raises(LmlabError, match="no index.json"):
        ShardedTokens.open(prepared)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"shard_tokens": 0}, "shard_tokens must be a positive integer"),
        ({"batch_docs": 0}, "batch_docs must be a positive integer"),
        ({"doc_separator": "newline"}, "doc_separator must be 'eos' or None"),
        ({"documents": "paragraph"}, "documents must be one of file, line"),
    ],
)
def test_bad_arguments(tmp_path, bpe, kwargs, message):
    with pytest.raises(LmlabError, match=message):
        prepare_shards(bpe, write(tmp_path / "a.txt", "x"), tmp_path / "out", **kwargs)


def test_missing_and_empty_inputs(tmp_path, bpe):
    with pytest.raises(LmlabError, match="no such file, directory or glob"):
        prepare_shards(bpe, tmp_path / "nope.txt", tmp_path / "out")
    with pytest.raises(LmlabError, match="no such file, directory or glob"):
        prepare_shards(bpe, [tmp_path / "nope*.txt"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match="contains no files"):
        prepare_shards(bpe, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(LmlabError, match="produced no tokens"):
        prepare_shards(bpe, write(tmp_path / "e.txt", ""), tmp_path / "out")


def test_glob_inputs(tmp_path, bpe):
    for name in ("b.txt", "a.txt", "c.md"):
        write(tmp_path / name, name + "\n")
    index = prepare_shards(bpe, str(tmp_path / "*.txt"), tmp_path / "out")
    assert bpe.decode(all_tokens(tmp_path / "out")) == "a.txt\n</s>b.txt\n"
    assert index.documents == 2
    prepare_shards(bpe, [tmp_path / "c.md", str(tmp_path / "[ab].txt")], tmp_path / "out")
    assert bpe.decode(all_tokens(tmp_path / "out")) == "c.md\n</s>a.txt\n</s>b.txt\n"


def test_prepare_refuses_a_directory_with_files_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write(out / "index.json", '{"mine": true}')
    with pytest.raises(LmlabError) as info:
        prepare_shards(CharTokenizer.from_text("ab"), write(tmp_path / "a.txt", "ab"), out, doc_separator=None)
    assert "did not write" in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in out.iterdir()] == ["index.json"] and (out / "index.json").read_text() == '{"mine": true}'


def test_rerun_deletes_only_its_own_shard_files(tmp_path):
    tok = CharTokenizer.from_text("ab")
    prepare_shards(tok, write(tmp_path / "a.txt", "ab" * 10), tmp_path / "out", shard_tokens=10, doc_separator=None)
    write(tmp_path / "out" / "shard-notes.bin", "mine")
    prepare_shards(tok, write(tmp_path / "a.txt", "ab"), tmp_path / "out", shard_tokens=10, doc_separator=None)
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.bin")) == ["shard-00000.bin", "shard-notes.bin"]


def test_ids_outside_a_vocabulary_are_found_when_the_shards_are_opened(tmp_path):
    tokenizer = CharTokenizer.from_text("abc\n")
    out = tmp_path / "shards"
    prepare_shards(tokenizer, write(tmp_path / "a.txt", "abcabc\n" * 50), out, doc_separator=None)
    store = ShardedTokens.open(out)
    store.check_ids_below(tokenizer.vocab_size)
    with pytest.raises(LmlabError, match="holds token id 3 but the model's vocabulary has 3 ids") as caught:
        store.check_ids_below(3)
    assert "\n" not in str(caught.value)
