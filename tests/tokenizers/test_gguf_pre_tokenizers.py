"""GGUF byte-level vocabularies split text as their ``tokenizer.ggml.pre`` name says (issue 12,
item 9): every name llama.cpp maps to a splitting rule loads, and each encodes like a reference —
transformers' GGUF tokenizer where it knows the rule, else the model's own tokenizer.json
pre-tokenizer rebuilt from the ``tokenizers`` library's parts, else (rules no reference
implements) texts split by hand as llama.cpp's regexes say."""

from __future__ import annotations

import pytest
import transformers
from tokenizers import Regex
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, pre_tokenizers, trainers
from test_pretrained_tokenizers import SAMPLES, assert_same_as_reference, gpt2_gguf_metadata, write_gguf

from lmlab.errors import LmlabError
from lmlab.tokenizers import load_pretrained_tokenizer
from lmlab.tokenizers.gguf_vocab import GGUF_PRE_TOKENIZERS, tokenizer_from_gguf_metadata

pytest.importorskip("gguf")
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS  # noqa: E402

VARIED = (
    "DON'T stop: it's 3.14159 or 1234567, isn't it? parseHTTPResponse\n\n  Indented\tline \r\n"
    "Ünïcödé wörds, Ελληνικά καὶ ῥήματα, 漢字かなカナ 한국어!!! <sentinel:12> IMGIMGABZ e=mc^2 $100 ~/path|x"
)
TEXTS = [VARIED, *SAMPLES]
# Names llama.cpp splits exactly like a name transformers knows.
SAME_RULE_AS = {"stablelm2": "qwen2", "chatglm-bpe": "llama3", "glm4": "llama3"}


def byte_level(use_regex: bool = False) -> pre_tokenizers.ByteLevel:
    """GPT-2's byte → character mapping, splitting by GPT-2's regex only with ``use_regex``."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


# The pre-tokenizers of the models' own tokenizer.json files, for rules transformers does not know.
ORIGINAL_PRE_TOKENIZERS = {
    "starcoder": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level(use_regex=True)]
    ),
    "bloom": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?…。，、।۔،])]+"), behavior="isolated"),
            byte_level(),
        ]
    ),
}
RULE_OF = {
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"), "starcoder"),
    **dict.fromkeys(("bloom", "poro-chat", "gpt3-finnish"), "bloom"),
}


@pytest.fixture(scope="module")
def metadata() -> dict:
    """GGUF metadata of a byte-level BPE whose merges cross every split boundary (trained on
    whole texts), so that a different split gives different ids."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = byte_level()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900,
        special_tokens=["<|endoftext|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator([text for text in TEXTS for _ in range(20)], trainer)
    return gpt2_gguf_metadata(backend)


def with_pre(metadata: dict, pre: str) -> dict:
    return {**metadata, "tokenizer.ggml.pre": pre}


def transformers_gguf_tokenizer(tmp_path, metadata: dict):
    write_gguf(tmp_path / "model.gguf", metadata)
    return transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")


def test_every_name_transformers_knows_is_known():
    assert set(GGUF_PRE_TOKENIZER_SPLITS) <= set(GGUF_PRE_TOKENIZERS)


TRANSFORMERS_NAMES = sorted(
    name for name, rule in GGUF_PRE_TOKENIZERS.items()
    if name in GGUF_PRE_TOKENIZER_SPLITS or name in SAME_RULE_AS or rule == "gpt2"
)


@pytest.mark.parametrize("pre", TRANSFORMERS_NAMES)
def test_split_matches_transformers_gguf_tokenizer(tmp_path, metadata, pre):
    reference = transformers_gguf_tokenizer(tmp_path, with_pre(metadata, SAME_RULE_AS.get(pre, pre)))
    write_gguf(tmp_path / "named.gguf", with_pre(metadata, pre))
    tokenizer = load_pretrained_tokenizer(tmp_path / "named.gguf")
    assert_same_as_reference(tokenizer, reference, TEXTS)


@pytest.mark.parametrize("pre", sorted(RULE_OF))
def test_split_matches_the_models_own_pre_tokenizer(metadata, pre):
    tokenizer = tokenizer_from_gguf_metadata(with_pre(metadata, pre))
    reference = HFBackend.from_str(tokenizer.backend.to_str())
    reference.pre_tokenizer = ORIGINAL_PRE_TOKENIZERS[RULE_OF[pre]]()
    for text in TEXTS:
        assert tokenizer.encode(text, add_special_tokens=True) == reference.encode(text).ids, text


@pytest.mark.parametrize(
    "pre, text, expected",
    [
        # Falcon's own tokenizer.json runs Digits after ByteLevel (which also splits "½", a byte's
        # spelling); llama.cpp, followed here, splits the text itself.
        ("falcon", "it's 3.14 x", ["it", "'", "s", " 3", ".", "14", " x"]),
        ("deepseek-llm", "Ωmega 漢字 42", ["Ω", "mega", " ", "漢字", " ", "42"]),
        ("deepseek-coder", "ab 12\n!", ["ab", " ", "1", "2", "\n", "!"]),
        ("deepseek-v3", "x 1234", ["x", " ", "123", "4"]),
        ("viking", "it's 12, ok", ["it's", " ", "1", "2", ",", " ok"]),
        ("chameleon", "<sentinel:3>  a", ["<", "sentinel", ":", "3", ">", "  ", "a"]),
    ],
)
def test_rules_without_a_reference_split_as_llama_cpp_does(metadata, pre, text, expected):
    """The rules no reference tokenizer implements, on texts worked through by hand."""
    backend = tokenizer_from_gguf_metadata(with_pre(metadata, pre)).backend
    spelled = [byte_level().pre_tokenize_str(piece)[0][0] for piece in expected]
    assert [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] == spelled


def test_the_split_rule_changes_the_ids(metadata):
    """The vocabulary is sensitive to the split: the rule families encode VARIED differently."""
    encodings = {
        pre: tuple(tokenizer_from_gguf_metadata(with_pre(metadata, pre)).encode(VARIED))
        for pre in ("gpt-2", "llama3", "qwen2", "smollm", "falcon", "bloom", "gpt-4o", "tekken")
    }
    assert len(set(encodings.values())) == len(encodings)


def test_an_unknown_name_is_one_line_listing_the_known_ones(metadata):
    with pytest.raises(LmlabError, match="pre-tokenizer 'mystery' is not supported; known: .*smollm") as caught:
        tokenizer_from_gguf_metadata(with_pre(metadata, "mystery"))
    assert "\n" not in str(caught.value)


def test_merges_of_tokens_not_in_the_vocabulary_are_one_line(metadata):
    broken = {**metadata, "tokenizer.ggml.merges": ["Ġ zzz-not-a-token"]}
    with pytest.raises(LmlabError, match="GGUF tokenizer metadata is inconsistent") as caught:
        tokenizer_from_gguf_metadata(broken)
    assert "\n" not in str(caught.value)
