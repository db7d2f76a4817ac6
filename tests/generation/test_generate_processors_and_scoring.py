"""New processors equal the reference's on random logits; cached decoding equals uncached;
scoring, the alternatives table and the text streamer."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig, generate_batch, generate_seq2seq, min_p_filter, no_repeat_ngram_ban
from lmlab.generation import repetition_penalty
from lmlab.generation.loop import decode, strategy_for
from lmlab.generation.processors import LogitsPipeline
from lmlab.generation.scoring import format_alternatives, score_continuation, top_alternatives
from lmlab.generation.session import left_pad
from lmlab.generation.streaming import TextStreamer, stream_text
from lmlab.models import ModelConfig, build_model

VOCAB = 31


def random_logits(seed=0, batch=4, vocab=50):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def random_ids(seed=0, batch=4, length=12, vocab=6):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_min_p_equals_transformers(p):
    for seed in range(3):
        logits = random_logits(seed)
        expected = MinPLogitsWarper(min_p=p)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        assert torch.equal(min_p_filter(logits, p), expected)


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    logits, ids = random_logits(1, vocab=6), random_ids(1)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert torch.equal(repetition_penalty(logits, ids, penalty), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 20])
def test_no_repeat_ngram_equals_transformers(n):
    for seed in range(3):
        logits, ids = random_logits(seed, vocab=6), random_ids(seed)
        expected = NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
        assert torch.equal(no_repeat_ngram_ban(logits, ids, n), expected)


@pytest.mark.parametrize("length", [5, 7, 8, 12])
def test_min_new_tokens_equals_transformers(length):
    logits, ids = random_logits(2), random_ids(2, length=length)
    expected = MinNewTokensLengthLogitsProcessor(5, 3, [2, 7])(ids, logits.clone())
    pipeline = LogitsPipeline.build(sampling=False, prompt_len=5, eos_ids=[2, 7], min_new_tokens=3)
    assert torch.equal(pipeline(ids, logits), expected)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_heads=2, d_model=32, context_length=32,
                         dropout=0.0, position="rope")
    model = build_model(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(std=0.3)
    return model


class UncachedSession:
    """Recomputes the whole (left-padded) history at every step: the reference for the cache."""

    draft = None  # no speculative decoding

    def __init__(self, model, ids, mask, seq2seq=None):
        self.model, self.ids, self.mask, self.seq2seq = model, ids, mask, seq2seq

    def _logits(self):
        if self.seq2seq is not None:
            memory, memory_mask = self.seq2seq
            return self.model.decode(self.ids, memory, memory_mask)[:, -1]
        positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(self.ids, attention_mask=self.mask, position_ids=positions)[:, -1]

    def prefill(self):
        return self._logits()

    def step(self, token):
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._logits()

    def reorder(self, index):
        self.ids, self.mask = self.ids[index], self.mask[index]


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]


@pytest.mark.parametrize("settings", [dict(strategy="greedy", repetition_penalty=1.2),
                                      dict(strategy="beam", num_beams=3, num_return_sequences=2, eos_ids=(5,))])
def test_cached_decoding_equals_uncached(model, settings):
    config = GenerationConfig(max_new_tokens=12, **settings)
    copies = config.num_beams
    ids, mask = left_pad(PROMPTS, 0)
    ids, mask = ids.repeat_interleave(copies, 0), mask.repeat_interleave(copies, 0)
    with torch.inference_mode():
        uncached = decode(UncachedSession(model, ids, mask), strategy_for(config), ids, config, 0, len(PROMPTS))
    assert generate_batch(model, PROMPTS, config).sequences == uncached.sequences


def test_padded_rows_equal_their_unpadded_runs(model):
    config = GenerationConfig(max_new_tokens=10)
    batch = generate_batch(model, PROMPTS, config).sequences
    assert batch == [generate_batch(model, [p], config).sequences[0] for p in PROMPTS]


def test_encoder_decoder_cached_equals_uncached():
    torch.manual_seed(0)
    config = ModelConfig(backbone="encoder-decoder", vocab_size=VOCAB, n_layer=2, n_head=4, d_model=32,
                         context_length=32, dropout=0.0)
    model = build_model(config).eval()
    inputs = [[3, 4, 5, 6], [7, 8]]
    for settings in (dict(), dict(strategy="beam", num_beams=3)):
        gen = GenerationConfig(max_new_tokens=8, **settings)
        cached = generate_seq2seq(model, inputs, gen, decoder_start_id=1).sequences
        copies = gen.num_beams
        ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
        mask = torch.tensor([[True] * 4, [True, True, False, False]])
        with torch.inference_mode():
            memory = model.encode(ids, mask).repeat_interleave(copies, 0)
            start = torch.ones(2 * copies, 1, dtype=torch.long)
            session = UncachedSession(model, start, torch.ones_like(start, dtype=torch.bool), (memory, mask.repeat_interleave(copies, 0)))
            assert decode(session, strategy_for(gen), start, gen, 0, 2).sequences == cached


def test_sampling_with_several_return_sequences_is_seeded(model):
    config = GenerationConfig(max_new_tokens=8, strategy="sample", num_return_sequences=3, seed=5, min_p=0.1)
    first = generate_batch(model, PROMPTS[:2], config).sequences
    assert len(first) == 6 and first == generate_batch(model, PROMPTS[:2], config).sequences


def test_score_continuation_is_the_sum_of_token_logprobs(model):
    prompt, cont = [1, 2, 3], [4, 5, 6]
    score = score_continuation(model, prompt, cont)
    expected = 0.0
    with torch.no_grad():
        for i, token in enumerate(cont):
            logits = model(torch.tensor([prompt + cont[:i]]))[0, -1]
            expected += float(torch.log_softmax(logits, -1)[token])
    assert score.logprob == pytest.approx(expected, abs=1e-4)
    assert score.perplexity == pytest.approx(math.exp(-expected / 3), rel=1e-4)
    with pytest.raises(LmlabError):
        score_continuation(model, prompt, [])


def test_alternatives_table_follows_greedy(model):
    rows = top_alternatives(model, [1, 2], steps=4, n=3)
    greedy = generate_batch(model, [[1, 2]], GenerationConfig(max_new_tokens=4)).sequences[0]
    assert [r.choices[0][0] for r in rows] == greedy
    assert all(len(r.choices) == 3 and r.choices[0][1] >= r.choices[1][1] for r in rows)
    table = format_alternatives(rows, lambda ids: "".join(chr(97 + i % 26) for i in ids))
    assert table.splitlines()[0] == "| Input | Choice 1 | Choice 2 | Choice 3 |"
    assert "%)" in table and len(table.splitlines()) == 6


def test_streamer_never_emits_partial_utf8():
    data = "héllo wörld ✓".encode()
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    streamer = TextStreamer(decode)
    pieces = [streamer.push(b) for b in data] + [streamer.flush()]
    assert "".join(pieces) == "héllo wörld ✓" and all("\ufffd" not in p for p in pieces)


def test_streamer_stops_before_a_stop_string():
    decode = lambda ids: "".join(chr(i) for i in ids)  # noqa: E731
    streamer = TextStreamer(decode, stop=("END",))
    out = "".join(streamer.push(ord(c)) for c in "abc ENx EN END tail")
    assert out == "abc ENx EN " and streamer.stopped


def test_stream_text_stops_at_eos(model):
    config = GenerationConfig(max_new_tokens=20)
    tokens = generate_batch(model, [[1, 2]], config).sequences[0]
    eos = tokens[4]
    text = "".join(stream_text(model, lambda ids: ",".join(map(str, ids)), [1, 2],
                               GenerationConfig(max_new_tokens=20, eos_ids=(eos,))))
    assert text == ",".join(map(str, tokens[: tokens.index(eos) + 1]))


@pytest.mark.parametrize("settings,words", [
    (dict(strategy="beam", num_beams=0), ["num-beams"]),
    (dict(strategy="beam", num_beams=2, num_return_sequences=3), ["num-return-sequences", "num-beams"]),
    (dict(strategy="greedy", num_beams=4), ["beam"]),
    (dict(strategy="sample", min_p=1.5), ["min-p"]),
    (dict(repetition_penalty=0.0), ["repetition-penalty"]),
    (dict(no_repeat_ngram_size=-1), ["no-repeat-ngram-size"]),
])
def test_impossible_beam_and_penalty_settings(model, settings, words):
    with pytest.raises(LmlabError) as info:
        generate_batch(model, [[1]], GenerationConfig(**settings))
    assert "\n" not in str(info.value) and all(w in str(info.value) for w in words)


def test_too_long_for_the_context_is_an_error(model):
    with pytest.raises(LmlabError, match="context"):
        generate_batch(model, [[1, 2]], GenerationConfig(max_new_tokens=40))


@pytest.mark.parametrize("backbone", ["decoder", "encoder-decoder"])
def test_gru_models_decode_greedy_and_beam(backbone):
    torch.manual_seed(0)
    gru = build_model(ModelConfig(arch="gru", backbone=backbone, vocab_size=VOCAB, n_layer=1, d_model=16,
                                  rnn_hidden=24, context_length=32, dropout=0.0)).eval()
    for settings in (dict(), dict(strategy="beam", num_beams=3, num_return_sequences=2)):
        config = GenerationConfig(max_new_tokens=6, **settings)
        if backbone == "decoder":
            out = generate_batch(gru, [[1, 2, 3], [4, 5, 6]], config).sequences
        else:
            out = generate_seq2seq(gru, [[1, 2, 3], [4, 5, 6]], config, decoder_start_id=1).sequences
        assert len(out) == 2 * config.num_return_sequences and all(len(s) == 6 for s in out)
    if backbone == "decoder":
        history = [1, 2, 3]
        with torch.no_grad():
            for _ in range(6):
                history.append(int(gru(torch.tensor([history]))[0, -1].argmax()))
        assert generate_batch(gru, [[1, 2, 3]], GenerationConfig(max_new_tokens=6)).sequences[0] == history[3:]


def test_bfloat16_weights_generate(model):
    import copy

    half = copy.deepcopy(model).to(torch.bfloat16)
    for settings in (dict(), dict(strategy="beam", num_beams=2), dict(strategy="sample", top_k=5, seed=0)):
        out = generate_batch(half, PROMPTS, GenerationConfig(max_new_tokens=6, **settings)).sequences
        assert len(out) == 3 and all(len(s) == 6 for s in out)
    assert score_continuation(half, [1, 2], [3]).logprob < 0
