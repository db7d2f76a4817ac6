"""Tests for trained byte-level BPE / WordPiece tokenizers and the Hugging Face wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmlab.errors import LmlabError
from lmlab.tokenizers import (
    TOKENIZER_TRAINING_KINDS,
    HFTokenizer,
    load_pretrained_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "shakespeare_excerpt.txt"
VOCAB_SIZE = 1000
SAMPLES = [
    "Hello, world!",
    "ROMEO: O Romeo, Romeo! wherefore art thou Romeo?",
    "  multiple   spaces\tand\ttabs\n\nnew lines\n",
    " leading space and trailing ",
    "Café naïve résumé — Ünïcödé ÀÉÎÕÜ",
    "emoji 😀🎉👍🏽 and CJK 漢字かな",
    "<s>specials</s> in <mask> text <pad> <unk>",
    "[CLS] upper CASE [SEP] and [MASK] [PAD] [UNK]",
    "",
]
BPE_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Tiny Shakespeare when the shared data is there, else the excerpt shipped with the tests."""
    shared = DATA / "tinyshakespeare.txt"
    return shared if shared.is_file() else EXCERPT


# ---------------------------------------------------------------- reference pipelines


def reference_bpe(vocab_size: int) -> tuple[HFBackend, trainers.Trainer]:
    """GPT-2/RoBERTa-style byte-level BPE, set up directly with the library."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    return backend, trainer


def reference_wordpiece(
    vocab_size: int, vocab: dict[str, int] | None = None
) -> tuple[HFBackend, trainers.Trainer]:
    """BERT-style WordPiece, set up directly with the library (around ``vocab`` when given)."""
    backend = HFBackend(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(WORDPIECE_SPECIALS)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=WORDPIECE_SPECIALS,
        show_progress=False,
    )
    return backend, trainer


REFERENCES = {
    "bpe": (reference_bpe, ("<s>", "</s>")),
    "wordpiece": (reference_wordpiece, ("[CLS]", "[SEP]")),
}


def with_template(backend: HFBackend, start: str, end: str) -> HFBackend:
    backend.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}",
        pair=f"{start} $A {end} $B:1 {end}:1",
        special_tokens=[(start, backend.token_to_id(start)), (end, backend.token_to_id(end))],
    )
    return backend


@pytest.fixture(scope="module", params=TOKENIZER_TRAINING_KINDS)
def trained(request, corpus) -> tuple[HFTokenizer, HFBackend]:
    """(our tokenizer, the library's reference) trained on the same corpus."""
    kind = request.param
    build, (start, end) = REFERENCES[kind]
    reference, trainer = build(VOCAB_SIZE)
    reference.train([str(corpus)], trainer)
    return train_tokenizer(kind, [str(corpus)], VOCAB_SIZE), with_template(reference, start, end)


def with_our_ids(tok: HFTokenizer, reference: HFBackend) -> HFBackend:
    """The reference with our ids. BPE training is deterministic, so the reference itself;
    WordPiece training numbers its vocabulary in hash order (differently on every run, in the
    library too), so the reference pipeline rebuilt around our vocabulary."""
    if isinstance(reference.model, models.BPE):
        assert tok.backend.get_vocab() == reference.get_vocab()
        return reference
    rebuilt, _ = reference_wordpiece(VOCAB_SIZE, vocab=tok.backend.get_vocab())
    return with_template(rebuilt, "[CLS]", "[SEP]")


def test_trained_tokenizer_learns_the_library_vocabulary(trained):
    """BPE: the same vocabulary. WordPiece: the library breaks ties between equally frequent
    merges at the vocabulary's edge in hash order, so two of its own runs can differ by an entry
    or two; the vocabularies must agree but for those, and our tokenizer must split text as the
    library's pipeline does with our vocabulary."""
    tok, reference = trained
    ours, theirs = set(tok.backend.get_vocab()), set(reference.get_vocab())
    if isinstance(reference.model, models.BPE):
        assert ours == theirs
    else:
        assert len(ours ^ theirs) <= 0.01 * VOCAB_SIZE, sorted(ours ^ theirs)
    reference = with_our_ids(tok, reference)
    for text in SAMPLES:
        tokens = [tok.id_to_token(i) for i in tok.encode(text)]
        assert tokens == reference.encode(text, add_special_tokens=False).tokens


def test_trained_tokenizer_encodes_and_decodes_as_the_library(trained):
    tok, reference = trained
    reference = with_our_ids(tok, reference)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=True) == reference.encode(text).ids
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == reference.decode(
                ids, skip_special_tokens=skip
            )
    encodings = reference.encode_batch(SAMPLES, add_special_tokens=False)
    expected = [encoding.ids for encoding in encodings]
    assert tok.encode_batch(SAMPLES) == expected
    assert tok.decode_batch(expected) == reference.decode_batch(expected, skip_special_tokens=False)


def test_trained_tokenizer_equals_transformers(trained):
    transformers = pytest.importorskip("transformers")
    tok, _ = trained
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert fast.encode(text, add_special_tokens=False) == ids
        assert fast.decode(ids, clean_up_tokenization_spaces=False) == tok.decode(ids)


def test_byte_level_bpe_is_lossless(corpus):
    tok = train_tokenizer("bpe", corpus, VOCAB_SIZE)
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text


def test_wordpiece_lowercases_and_marks_unknown_characters(corpus):
    tok = train_tokenizer("wordpiece", [corpus], VOCAB_SIZE)
    assert tok.encode("ROMEO Speaks") == tok.encode("romeo speaks")
    assert tok.special_tokens["unk"] in tok.encode("🎉")
    assert any(tok.id_to_token(i).startswith("##") for i in tok.encode("wherefore unspeakable"))


def test_training_from_an_iterator_equals_the_library():
    animals = ("quick brown fox", "lazy dog")
    texts = [f"line {i} of the {animals[i % 2]} jumps" for i in range(300)]
    tok = train_tokenizer("bpe", iter(texts), 300)
    reference, trainer = reference_bpe(300)
    reference.train_from_iterator(iter(texts), trainer)
    assert tok.backend.get_vocab() == reference.get_vocab()
    assert tok.vocab_size <= 300


# ---------------------------------------------------------------- vocabulary and roles


def test_vocab_size_is_respected(trained, corpus):
    tok, _ = trained
    assert tok.vocab_size == VOCAB_SIZE
    ids = tok.encode(corpus.read_text(encoding="utf-8")[:20_000])
    assert max(ids) < tok.vocab_size


@pytest.mark.parametrize(
    ("kind", "roles"),
    [
        ("bpe", {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "mask": 4}),
        ("wordpiece", {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4, "bos": 2, "eos": 3}),
    ],
)
def test_default_special_token_roles(corpus, kind, roles):
    tok = train_tokenizer(kind, [corpus], VOCAB_SIZE)
    assert tok.special_tokens == roles
    for token_id in roles.values():
        assert tok.token_to_id(tok.id_to_token(token_id)) == token_id
    start, end = (roles["bos"], roles["eos"])
    wrapped = tok.encode("Romeo", add_special_tokens=True)
    assert wrapped[0] == start and wrapped[-1] == end and wrapped[1:-1] == tok.encode("Romeo")


def test_custom_special_tokens_get_inferred_roles():
    texts = ["some text to learn from " * 3] * 50
    tok = train_tokenizer("bpe", iter(texts), 300, special_tokens=["<|endoftext|>", "<pad>"])
    assert tok.special_tokens == {"pad": 1, "bos": 0, "eos": 0}
    assert tok.encode("a<|endoftext|>") == [tok.token_to_id("a"), 0]


# ---------------------------------------------------------------- save, load, files


def test_save_and_load_round_trip(trained, tmp_path):
    tok, _ = trained
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, HFTokenizer)
    assert loaded.roles == tok.roles and loaded.special_tokens == tok.special_tokens
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    assert [loaded.encode(t, add_special_tokens=True) for t in SAMPLES] == [
        tok.encode(t, add_special_tokens=True) for t in SAMPLES
    ]


def test_from_file_infers_or_reads_the_roles(corpus, tmp_path):
    tok = train_tokenizer("bpe", [corpus], VOCAB_SIZE)
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    inferred = HFTokenizer.from_file(tmp_path)
    assert inferred.roles == {
        "pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>",
        "cls": "<s>", "sep": "</s>",
    }
    assert inferred.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    given = HFTokenizer.from_file(tmp_path / "tokenizer.json", roles={"eos": "</s>"})
    assert given.special_tokens == {"eos": 2}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": {"content": "</s>", "lstrip": False},
        "pad_token": "<pad>",
        "additional_special_tokens": ["<mask>"],
    }))
    assert HFTokenizer.from_file(tmp_path).special_tokens == {"eos": 2, "pad": 0}
    resolved = load_pretrained_tokenizer(tmp_path)
    assert isinstance(resolved, HFTokenizer) and resolved.special_tokens == {"eos": 2, "pad": 0}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kind", "source", "options", "match"),
    [
        ("unigram", "corpus", {}, "unknown tokenizer kind 'unigram'"),
        ("bpe", "corpus", {"vocab_size": 260}, "at least 261"),
        ("wordpiece", "corpus", {"vocab_size": 5}, "at least 6"),
        ("bpe", "corpus", {"vocab_size": 1 << 32}, "beyond the largest trainable"),
        ("wordpiece", "corpus", {"vocab_size": 10**12}, "beyond the largest trainable"),
        ("bpe", "corpus", {"min_frequency": -1}, "min_frequency"),
        ("bpe", ["missing.txt"], {}, "not found: 'missing.txt'"),
        ("bpe", ["To be or not to be"], {}, "iter"),
        ("bpe", [], {}, "no training files"),
        ("wordpiece", "corpus", {"special_tokens": ["[PAD]"]}, "unknown token"),
    ],
)
def test_bad_training_settings_are_errors(corpus, kind, source, options, match):
    files = corpus if source == "corpus" else source
    settings = {"vocab_size": VOCAB_SIZE} | options
    with pytest.raises(LmlabError, match=match) as caught:
        train_tokenizer(kind, files, **settings)
    assert "\n" not in str(caught.value)


def test_bad_files_and_ids_are_errors(trained, tmp_path):
    tok, _ = trained
    with pytest.raises(LmlabError, match="outside the vocabulary"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(LmlabError, match="outside the vocabulary"):
        tok.decode_batch([[0], [-1]])
    with pytest.raises(LmlabError, match="not in the vocabulary"):
        tok.id_to_token(tok.vocab_size)
    with pytest.raises(LmlabError, match="no Hugging Face tokenizer"):
        HFTokenizer.from_file(tmp_path / "absent")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not a valid Hugging Face tokenizer"):
        HFTokenizer.from_file(tmp_path)
    with pytest.raises(LmlabError, match="not in the tokenizer's vocabulary"):
        HFTokenizer(tok.backend, roles={"eos": "<|nope|>"})
