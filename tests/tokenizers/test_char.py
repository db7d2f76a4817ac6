"""Character tokenizer: round trip, unknown characters, the unk token, save/load, bad ids."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.tokenizers import TOKENIZER_FILE, CharTokenizer, Tokenizer, load_tokenizer
from lmlab.tokenizers.char import UNK_TOKEN

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_alphabet_is_sorted_distinct_characters():
    tok = CharTokenizer.from_text(CORPUS)
    assert tok.chars == sorted(set(CORPUS))
    assert tok.vocab_size == len(set(CORPUS))
    assert tok.encode("F") == [tok.chars.index("F")]
    assert tok.special_tokens == {}
    assert tok.token_to_id("F") == tok.chars.index("F")
    assert tok.token_to_id("Z") is None
    assert tok.id_to_token(tok.token_to_id("h")) == "h"


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=sorted(set(CORPUS)), max_size=200))
def test_round_trip(text):
    tok = CharTokenizer.from_text(CORPUS)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=1, max_size=100))
def test_round_trip_on_any_unicode_alphabet(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_unknown_characters_are_an_error_naming_them():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(LmlabError) as info:
        tok.encode("abxcyx")
    message = str(info.value)
    assert "'x'" in message and "'y'" in message
    assert "'a'" not in message and "'b'" not in message
    assert "\n" not in message


def test_many_unknown_characters_are_summarised():
    tok = CharTokenizer.from_text("a")
    with pytest.raises(LmlabError, match="and 5 more"):
        tok.encode("bcdefghijklmnop")  # 15 unknown characters: 10 shown


def test_unk_maps_unknown_characters_to_one_id():
    tok = CharTokenizer.from_text("abc", unk=True)
    assert tok.vocab_size == 4
    unk = tok.special_tokens["unk"]
    assert tok.chars[unk] == UNK_TOKEN
    assert tok.encode("axbz") == [tok.chars.index("a"), unk, tok.chars.index("b"), unk]
    assert tok.encode("abc") == [0, 1, 2]  # known characters keep their ids
    assert tok.decode(tok.encode("axb")) == "a" + UNK_TOKEN + "b"


@pytest.mark.parametrize("unk", [False, True])
def test_save_and_load(tmp_path, unk):
    tok = CharTokenizer.from_text(CORPUS + "é☃", unk=unk)
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    assert json.loads(path.read_text(encoding="utf-8"))["kind"] == "char"
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, CharTokenizer) and isinstance(loaded, Tokenizer)
    assert loaded.chars == tok.chars
    assert loaded.unk == unk
    assert loaded.special_tokens == tok.special_tokens
    text = "hear me, é☃"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(tok.encode(text)) == text


def test_load_from_a_directory_without_tokenizer_is_an_error(tmp_path):
    with pytest.raises(LmlabError, match=TOKENIZER_FILE):
        load_tokenizer(tmp_path)


def test_load_invalid_json_is_an_error(tmp_path):
    (tmp_path / TOKENIZER_FILE).write_text("{not json")
    with pytest.raises(LmlabError, match="not valid JSON"):
        load_tokenizer(tmp_path)


def test_decode_ids_past_the_vocabulary_is_an_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(LmlabError, match=r"\[3, 7\].*size 3"):
        tok.decode([0, 3, 1, 7])


def test_decode_negative_ids_is_an_error():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(LmlabError, match="outside the vocabulary"):
        tok.decode([0, -1])


def test_corpus_containing_the_replacement_character_encodes():
    text = "ab" + UNK_TOKEN + "c"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


def test_empty_corpus_is_an_error():
    with pytest.raises(LmlabError, match="empty"):
        CharTokenizer.from_text("")
