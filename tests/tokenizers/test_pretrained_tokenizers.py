"""Pretrained tokenizers (tokenizer.json, vocab.txt, vocab.json+merges.txt, SentencePiece, GGUF
metadata) against the ``transformers`` tokenizer built from the same files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer as HFBackend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmlab.errors import LmlabError
from lmlab.tokenizers import PretrainedHFTokenizer, load_pretrained_tokenizer, load_tokenizer, render_chat_template
from lmlab.tokenizers.gguf_vocab import merges_from_scores, tokenizer_from_gguf_metadata

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "shakespeare_excerpt.txt"
SAMPLES = [
    "Hello, world!",
    "ROMEO: O Romeo, Romeo! wherefore art thou Romeo?",
    "  multiple   spaces\tand\ttabs\n\nnew lines\n",
    " leading space and trailing ",
    "Café naïve résumé — Ünïcödé ÀÉÎÕÜ",
    "emoji 😀🎉👍🏽 and CJK 漢字かな",
    "<s>specials</s> in <mask> text <pad> <unk>",
    "[CLS] upper CASE [SEP] and [MASK] [PAD] [UNK]",
    "<|endoftext|>after end<|endoftext|> again",
    "don't stop: it's 3.14 , isn't it ?",
    "",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi — what's 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks ☺"},
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYS]{{ message['content'] | trim }}[/SYS]\n"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """Some 200 kB of Tiny Shakespeare (the shared copy, else the excerpt shipped with the tests)."""
    shared = DATA / "tinyshakespeare.txt"
    source = shared if shared.is_file() else EXCERPT
    return source.read_text(encoding="utf-8")[:200_000].split("\n")


def assert_same_as_reference(tokenizer, reference, samples=SAMPLES) -> None:
    """encode (with and without special tokens) and decode (with and without them) agree."""
    for text in samples:
        ids = reference.encode(text)
        assert tokenizer.encode(text, add_special_tokens=True) == ids, text
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False), text
        assert tokenizer.decode(ids) == reference.decode(ids), text
        assert tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True
        )


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def byte_level_bpe(lines: list[str], specials: list[str]) -> HFBackend:
    """A small GPT-2-style byte-level BPE trained on ``lines``."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(lines, trainer)
    return backend


# ---------------------------------------------------------------- vocab.txt (BERT)


@pytest.fixture(scope="module")
def wordpiece_vocab(lines) -> list[str]:
    backend = HFBackend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(
        lines, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials)
    )
    return [token for token, _ in sorted(backend.get_vocab().items(), key=lambda item: item[1])]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_wordpiece_vocab_txt_matches_bert_tokenizer(tmp_path, wordpiece_vocab, lower):
    (tmp_path / "vocab.txt").write_text(
        "".join(token + "\n" for token in wordpiece_vocab), encoding="utf-8"
    )
    write_json(
        tmp_path / "tokenizer_config.json",
        {"do_lower_case": lower, "tokenizer_class": "BertTokenizer"},
    )
    tokenizer = load_pretrained_tokenizer(tmp_path)
    assert_same_as_reference(tokenizer, transformers.BertTokenizer.from_pretrained(str(tmp_path)))
    assert tokenizer.special_tokens["cls"] == wordpiece_vocab.index("[CLS]")
    assert tokenizer.special_tokens["eos"] == wordpiece_vocab.index(
        "[SEP]"
    )  # lmlab: eos falls back to sep
    assert tokenizer.chat_template is None


# ---------------------------------------------------------------- vocab.json + merges.txt


@pytest.mark.parametrize("add_prefix_space", [False, True], ids=["no-prefix", "prefix"])
@pytest.mark.parametrize(
    "family, specials, reference_class",
    [
        ("gpt2", ["<|endoftext|>"], transformers.GPT2Tokenizer),
        ("roberta", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], transformers.RobertaTokenizer),
    ],
)
def test_byte_level_bpe_files_match_transformers(
    tmp_path, lines, family, specials, reference_class, add_prefix_space
):
    byte_level_bpe(lines, specials).model.save(str(tmp_path))
    assert {path.name for path in tmp_path.iterdir()} == {"vocab.json", "merges.txt"}
    config = {"add_prefix_space": add_prefix_space, "tokenizer_class": reference_class.__name__}
    write_json(tmp_path / "tokenizer_config.json", config)
    tokenizer = load_pretrained_tokenizer(tmp_path)
    assert_same_as_reference(tokenizer, reference_class.from_pretrained(str(tmp_path)))


def test_roberta_template_follows_the_model_type_without_a_tokenizer_class(tmp_path, lines):
    byte_level_bpe(lines, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]).model.save(str(tmp_path))
    write_json(tmp_path / "config.json", {"model_type": "roberta"})
    tokenizer = load_pretrained_tokenizer(tmp_path)
    ids = tokenizer.encode("hi there", add_special_tokens=True)
    assert (ids[0], ids[-1]) == (tokenizer.special_tokens["cls"], tokenizer.special_tokens["sep"])


# ---------------------------------------------------------------- tokenizer.json + chat template


@pytest.fixture
def chat_model_dir(tmp_path, lines) -> Path:
    backend = byte_level_bpe(lines, ["<|endoftext|>", "<s>", "</s>", "<|user|>", "<|assistant|>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos)]
            ),
        ]
    )
    backend.save(str(tmp_path / "tokenizer.json"))
    write_json(
        tmp_path / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "special": True, "__type": "AddedToken"},
            "unk_token": None,
            "pad_token": "<|endoftext|>",
            "chat_template": CHAT_TEMPLATE,
        },
    )
    return tmp_path


def test_tokenizer_json_with_config_matches_transformers(chat_model_dir):
    tokenizer = load_pretrained_tokenizer(chat_model_dir)
    reference = transformers.AutoTokenizer.from_pretrained(str(chat_model_dir))
    assert isinstance(tokenizer, PretrainedHFTokenizer)
    assert tokenizer.roles == {"bos": "<s>", "eos": "</s>", "pad": "<|endoftext|>"}
    assert_same_as_reference(tokenizer, reference)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_transformers(chat_model_dir, add_generation_prompt):
    tokenizer = load_pretrained_tokenizer(chat_model_dir)
    reference = transformers.AutoTokenizer.from_pretrained(str(chat_model_dir))
    expected = reference.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert (
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt)
        == expected
    )
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_chat_template_jinja_file_and_save_load_round_trip(chat_model_dir, tmp_path_factory):
    config = json.loads((chat_model_dir / "tokenizer_config.json").read_text())
    (chat_model_dir / "chat_template.jinja").write_text(
        config.pop("chat_template"), encoding="utf-8"
    )
    write_json(chat_model_dir / "tokenizer_config.json", config)
    tokenizer = load_pretrained_tokenizer(chat_model_dir)
    saved = tokenizer.save(tmp_path_factory.mktemp("saved")).parent
    restored = load_tokenizer(saved)
    assert restored.chat_template == CHAT_TEMPLATE
    assert restored.apply_chat_template(MESSAGES) == tokenizer.apply_chat_template(MESSAGES)
    assert restored.encode(SAMPLES[1], add_special_tokens=True) == tokenizer.encode(
        SAMPLES[1], add_special_tokens=True
    )


def test_chat_template_features_and_errors():
    template = (
        "{{ messages | tojson }}{% if x is defined %}{{ raise_exception('bad: ' ~ x) }}{% endif %}"
    )
    assert (
        render_chat_template(template, [{"role": "user", "content": "é"}])
        == '[{"role": "user", "content": "é"}]'
    )
    with pytest.raises(LmlabError, match="bad: 1"):
        render_chat_template(template, [], x=1)
    with pytest.raises(LmlabError, match="no chat template"):
        PretrainedHFTokenizer(
            HFBackend(models.WordLevel({"a": 0}, unk_token="a"))
        ).apply_chat_template(MESSAGES)


def test_sandbox_blocks_unsafe_templates():
    with pytest.raises(LmlabError, match="chat template failed"):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


# ---------------------------------------------------------------- tokenizer.json with stored settings


def wordpiece_with_template(lines: list[str]) -> tuple[HFBackend, str]:
    """A BERT-style WordPiece pipeline wrapping texts in [CLS] … [SEP] (TemplateProcessing), and its pad token."""
    backend = HFBackend(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return backend, "[PAD]"


def byte_level_with_roberta(lines: list[str]) -> tuple[HFBackend, str]:
    """A RoBERTa-style byte-level BPE wrapping texts in <s> … </s> (RobertaProcessing), and its pad token."""
    backend = byte_level_bpe(lines, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>"))
    )
    return backend, "<pad>"


@pytest.mark.parametrize("padding_length", [24, None], ids=["fixed-length", "batch-longest"])
@pytest.mark.parametrize("build", [wordpiece_with_template, byte_level_with_roberta])
def test_tokenizer_json_padding_and_truncation_are_not_applied(tmp_path, lines, build, padding_length):
    """A sentence-transformers style export: padding and truncation enabled in tokenizer.json."""
    backend, pad = build(lines)
    backend.enable_padding(pad_id=backend.token_to_id(pad), pad_token=pad, length=padding_length)
    backend.enable_truncation(max_length=24)
    backend.save(str(tmp_path / "tokenizer.json"))
    long_text = " ".join(SAMPLES[1:3]) * 3  # longer than the stored truncation length
    samples = [*SAMPLES, long_text]
    tokenizer = load_pretrained_tokenizer(tmp_path)
    assert_same_as_reference(tokenizer, transformers.AutoTokenizer.from_pretrained(str(tmp_path)), samples)
    from_file = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in samples:
        assert tokenizer.encode(text, add_special_tokens=True) == from_file(text)["input_ids"], text
    assert tokenizer.encode_batch(samples) == [tokenizer.encode(text) for text in samples]
    assert len(tokenizer.encode(long_text, add_special_tokens=True)) > 24
    assert tokenizer.roles["pad"] == pad
    restored = load_tokenizer(tokenizer.save(tmp_path / "saved").parent)
    assert restored.encode(SAMPLES[0], add_special_tokens=True) == tokenizer.encode(
        SAMPLES[0], add_special_tokens=True
    )


# ---------------------------------------------------------------- SentencePiece


@pytest.fixture(scope="module")
def spm_models(lines) -> dict[str, bytes]:
    """A Llama-style BPE and a T5-style unigram SentencePiece model trained on ``lines``."""
    sentencepiece = pytest.importorskip("sentencepiece")
    models_ = {}
    for kind, options in {
        "bpe": dict(
            model_type="bpe",
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            pad_id=-1,
        ),
        "unigram": dict(model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
    }.items():
        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buffer,
            vocab_size=500,
            character_coverage=1.0,
            minloglevel=2,
            **options,
        )
        models_[kind] = buffer.getvalue()
    return models_


def test_sentencepiece_bpe_matches_sentencepiece_and_llama_tokenizer(tmp_path, spm_models):
    pytest.importorskip("google.protobuf")  # transformers needs it to read the model
    import sentencepiece

    (tmp_path / "tokenizer.model").write_bytes(spm_models["bpe"])
    tokenizer = load_pretrained_tokenizer(tmp_path)
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_models["bpe"])
    for text in SAMPLES:
        if "<" not in text:  # sentencepiece itself does not keep special-token strings whole
            assert tokenizer.encode(text) == processor.encode(text), text
            assert tokenizer.decode(processor.encode(text)) == text
    # transformers does not add the dummy-prefix ▁ before a leading space (see SentencePieceTokenizer).
    samples = [text for text in SAMPLES if not text[:1].isspace()]
    assert_same_as_reference(
        tokenizer, transformers.LlamaTokenizer.from_pretrained(str(tmp_path)), samples
    )


def test_sentencepiece_unigram_matches_t5_tokenizer(tmp_path, spm_models):
    pytest.importorskip("google.protobuf")
    (tmp_path / "spiece.model").write_bytes(spm_models["unigram"])
    tokenizer = load_pretrained_tokenizer(tmp_path)
    assert tokenizer.roles == {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
    assert_same_as_reference(
        tokenizer, transformers.T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=0)
    )


def test_sentencepiece_config_flags_and_round_trip(tmp_path, spm_models):
    (tmp_path / "tokenizer.model").write_bytes(spm_models["bpe"])
    write_json(
        tmp_path / "tokenizer_config.json",
        {"add_bos_token": True, "add_eos_token": True, "chat_template": CHAT_TEMPLATE},
    )
    tokenizer = load_pretrained_tokenizer(tmp_path)
    ids = tokenizer.encode("Hello there", add_special_tokens=True)
    assert (ids[0], ids[-1]) == (tokenizer.special_tokens["bos"], tokenizer.special_tokens["eos"])
    restored = load_tokenizer(tokenizer.save(tmp_path / "saved").parent)
    assert restored.kind == "sentencepiece"
    assert restored.encode(SAMPLES[6], add_special_tokens=True) == tokenizer.encode(
        SAMPLES[6], add_special_tokens=True
    )
    assert restored.apply_chat_template(MESSAGES).startswith("<s>[SYS]Be brief.[/SYS]\n<|user|>")


# ---------------------------------------------------------------- GGUF metadata


def write_gguf(path: Path, tokenizer_metadata: dict) -> None:
    """A minimal Llama GGUF holding ``tokenizer_metadata`` (so transformers can read its tokenizer)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    for key, value in tokenizer_metadata.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        else:
            writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_gguf_metadata(model: bytes) -> dict:
    """The tokenizer metadata llama.cpp's converter writes for a SentencePiece model."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    ids = range(processor.get_piece_size())

    def token_type(i: int) -> int:
        checks = [
            (processor.is_control, 3),
            (processor.is_unknown, 2),
            (processor.is_byte, 6),
            (processor.is_unused, 5),
        ]
        return next((kind for check, kind in checks if check(i)), 1)

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": [processor.id_to_piece(i) for i in ids],
        "tokenizer.ggml.scores": [processor.get_score(i) for i in ids],
        "tokenizer.ggml.token_type": [token_type(i) for i in ids],
        "tokenizer.ggml.bos_token_id": processor.bos_id(),
        "tokenizer.ggml.eos_token_id": processor.eos_id(),
        "tokenizer.ggml.unknown_token_id": processor.unk_id(),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def gpt2_gguf_metadata(backend: HFBackend) -> dict:
    """GGUF tokenizer metadata of a byte-level BPE: tokens by id, merges, control specials."""
    state = json.loads(backend.to_str())["model"]
    tokens = [token for token, _ in sorted(state["vocab"].items(), key=lambda item: item[1])]
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in state["merges"]]
    specials = {"<|endoftext|>", "<|user|>", "<|assistant|>"}
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3 if token in specials else 1 for token in tokens],
        "tokenizer.ggml.bos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|endoftext|>"),
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


@pytest.fixture(params=["llama", "gpt2"])
def gguf_metadata(request, lines) -> dict:
    if request.param == "llama":
        return llama_gguf_metadata(request.getfixturevalue("spm_models")["bpe"])
    return gpt2_gguf_metadata(byte_level_bpe(lines, ["<|endoftext|>", "<|user|>", "<|assistant|>"]))


def test_gguf_tokenizer_matches_transformers_gguf_loader(tmp_path, gguf_metadata):
    pytest.importorskip("gguf")
    write_gguf(tmp_path / "model.gguf", gguf_metadata)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    tokenizer = tokenizer_from_gguf_metadata(gguf_metadata)
    assert_same_as_reference(tokenizer, reference)
    for add_generation_prompt in (True, False):
        assert tokenizer.apply_chat_template(
            MESSAGES, add_generation_prompt
        ) == reference.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def test_gguf_llama_tokenizer_matches_sentencepiece_on_text_without_leading_space(spm_models):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=spm_models["bpe"])
    tokenizer = tokenizer_from_gguf_metadata(llama_gguf_metadata(spm_models["bpe"]))
    for text in SAMPLES:
        if "<" not in text and not text[:1].isspace():
            assert tokenizer.encode(text, add_special_tokens=True) == [
                processor.bos_id(),
                *processor.encode(text),
            ]


def test_merges_from_scores_orders_by_score_then_length():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5]
    assert merges_from_scores(tokens, scores) == [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]


def test_gguf_metadata_errors():
    with pytest.raises(LmlabError, match="'bert'"):
        tokenizer_from_gguf_metadata(
            {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]}
        )
    with pytest.raises(LmlabError, match="pre-tokenizer 'mystery'"):
        tokenizer_from_gguf_metadata(
            {
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a"],
                "tokenizer.ggml.pre": "mystery",
            }
        )


# ---------------------------------------------------------------- errors


def test_directory_errors(tmp_path):
    with pytest.raises(LmlabError, match="does not exist"):
        load_pretrained_tokenizer(tmp_path / "missing")
    with pytest.raises(
        LmlabError, match="looked for tokenizer.json, vocab.json\\+merges.txt, vocab.txt"
    ):
        load_pretrained_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmlabError, match="not a valid Hugging Face tokenizer file"):
        load_pretrained_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(LmlabError, match="does not hold a JSON object"):
        load_pretrained_tokenizer(tmp_path)


def test_single_tokenizer_files_are_read_as_given(tmp_path, wordpiece_vocab, lines):
    """A file path reads that file (with the tokenizer_config.json beside it), not the directory's
    preferred one; a file of another kind is a one-line error."""
    (tmp_path / "vocab.txt").write_text("".join(token + "\n" for token in wordpiece_vocab), encoding="utf-8")
    write_json(tmp_path / "tokenizer_config.json", {"do_lower_case": False})
    reference = transformers.BertTokenizer.from_pretrained(str(tmp_path))
    byte_level_bpe(lines, ["<|endoftext|>"]).save(str(tmp_path / "tokenizer.json"))  # preferred in a directory
    from_vocab = load_pretrained_tokenizer(tmp_path / "vocab.txt")
    assert_same_as_reference(from_vocab, reference)
    assert load_pretrained_tokenizer(tmp_path).encode(SAMPLES[1]) != from_vocab.encode(SAMPLES[1])
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(LmlabError, match="has no vocab.json; byte-level BPE needs both"):
        load_pretrained_tokenizer(tmp_path / "merges.txt")
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(LmlabError, match="notes.md is not a tokenizer file lmlab reads"):
        load_pretrained_tokenizer(tmp_path / "notes.md")


def test_bad_merges_and_sentencepiece_files(tmp_path):
    write_json(tmp_path / "vocab.json", {"a": 0, "b": 1, "ab": 2})
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nab\n")
    with pytest.raises(LmlabError, match="line 3 is not a merge of two tokens"):
        load_pretrained_tokenizer(tmp_path)
    pytest.importorskip("sentencepiece")
    other = tmp_path / "spm"
    other.mkdir()
    (other / "tokenizer.model").write_bytes(b"definitely not a model")
    with pytest.raises(LmlabError, match="not a valid SentencePiece model"):
        load_pretrained_tokenizer(other)


def test_end_of_turn_ids_are_eos_and_the_templates_turn_tokens(tmp_path):
    from tokenizers import Tokenizer, models

    from lmlab.tokenizers.hf_pretrained import PretrainedHFTokenizer

    words = ["</s>", "<|im_end|>", "<|eot_id|>", "hello"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="hello"))
    backend.add_special_tokens(words[:3])
    tokenizer = PretrainedHFTokenizer(backend, {"eos": "</s>"}, "{{ messages }}")
    assert tokenizer.end_of_turn_ids() == (0, 1, 2)
    assert tokenizer.decode_visible([3, 1, 3, 0]) == tokenizer.decode([3, 3])
