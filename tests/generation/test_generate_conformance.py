"""Greedy and beam search are token-identical to transformers' generate() on tiny random GPT-2,
Llama, T5 and BART models loaded through lmlab.interop (padded batches included)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmlab.generation import GenerationConfig, generate, generate_batch, generate_seq2seq  # noqa: E402
from lmlab.generation.session import left_pad  # noqa: E402
from lmlab.interop import load_hf  # noqa: E402

VOCAB, PAD = 99, 0
PROMPTS = [[5, 17, 42], [8, 9, 10, 11, 12, 13, 14], [70, 3, 3, 61, 20]]


def sharpen(model, std=0.15):
    """Larger random weights than the init: peaked distributions, so no near-ties between the
    implementations' float rounding."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(std=std)
    return model


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
    return sharpen(transformers.GPT2LMHeadModel(config).eval())


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return sharpen(transformers.LlamaForCausalLM(config).eval())


def tiny_t5():
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   decoder_start_token_id=0, pad_token_id=0)
    return sharpen(transformers.T5ForConditionalGeneration(config).eval(), std=0.3)


def tiny_bart():
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
                                     decoder_ffn_dim=96, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                                     eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
                                     forced_eos_token_id=None)
    return sharpen(transformers.BartForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    """(transformers model, lmlab model) with the same weights."""
    ref = {"gpt2": tiny_gpt2, "llama": tiny_llama, "t5": tiny_t5, "bart": tiny_bart}[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    return ref, load_hf(folder).model


def cut(rows, prompt_len, eos):
    """transformers' output rows → new tokens up to and including the first EOS."""
    out = []
    for row in rows.tolist():
        row = row[prompt_len:]
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def an_eos(model, prompts, n=12):
    """A token greedy decoding reaches after a few steps, so EOS handling is really exercised."""
    out = generate_batch(model, prompts, GenerationConfig(max_new_tokens=n, strategy="greedy"), PAD).sequences
    return out[0][3]


def hf_generate(ref, prompts, **settings):
    ids, mask = left_pad(prompts, PAD)
    with torch.no_grad():
        out = ref.generate(input_ids=ids, attention_mask=mask.long(), pad_token_id=PAD, do_sample=False, **settings)
    return out, ids.size(1)


@pytest.mark.parametrize("pair", ["gpt2", "llama"], indirect=True)
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["b1", "padded-b3"])
def test_greedy_equals_transformers(pair, prompts):
    ref, model = pair
    eos = an_eos(model, prompts)
    for extra in ({}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}, {"min_new_tokens": 6}):
        config = GenerationConfig(max_new_tokens=12, strategy="greedy", eos_ids=(eos,), **extra)
        ours = generate_batch(model, prompts, config, PAD).sequences
        theirs, L = hf_generate(ref, prompts, max_new_tokens=12, eos_token_id=eos, num_beams=1, **extra)
        assert ours == cut(theirs, L, eos), extra


BEAM_SETTINGS = [
    dict(length_penalty=1.0, early_stopping=False),
    dict(length_penalty=0.6, early_stopping=True),
    dict(length_penalty=0.6, early_stopping=False, no_repeat_ngram_size=2),
    dict(length_penalty=1.0, early_stopping=True, num_return_sequences=2),
]


@pytest.mark.parametrize("pair", ["gpt2", "llama"], indirect=True)
@pytest.mark.parametrize("settings", BEAM_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_beam_search_equals_transformers(pair, settings):
    ref, model = pair
    eos = an_eos(model, PROMPTS)
    config = GenerationConfig(max_new_tokens=10, strategy="beam", num_beams=4, eos_ids=(eos,), **settings)
    ours = generate_batch(model, PROMPTS, config, PAD)
    theirs, L = hf_generate(ref, PROMPTS, max_new_tokens=10, num_beams=4, eos_token_id=eos,
                            output_scores=True, return_dict_in_generate=True, **settings)
    assert ours.sequences == cut(theirs.sequences, L, eos)
    torch.testing.assert_close(torch.tensor(ours.scores), theirs.sequences_scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pair", ["t5", "bart"], indirect=True)
@pytest.mark.parametrize("settings", [dict(strategy="greedy"), dict(strategy="beam", num_beams=4, length_penalty=0.6),
                                      dict(strategy="beam", num_beams=4, num_return_sequences=2, early_stopping=True)],
                         ids=["greedy", "beam4", "beam4-nrs2"])
def test_encoder_decoder_equals_transformers(pair, settings):
    ref, model = pair
    start = ref.config.decoder_start_token_id
    inputs = [[5, 17, 42, 7], [8, 9, 10, 11, 12, 13, 14], [70, 3, 61]]
    probe = generate_seq2seq(model, inputs, GenerationConfig(max_new_tokens=8), start, PAD).sequences
    eos = probe[0][2]
    config = GenerationConfig(max_new_tokens=8, eos_ids=(eos,), **settings)
    ours = generate_seq2seq(model, inputs, config, start, PAD).sequences
    L = max(map(len, inputs))
    ids = torch.tensor([x + [PAD] * (L - len(x)) for x in inputs])
    mask = torch.tensor([[1] * len(x) + [0] * (L - len(x)) for x in inputs])
    hf = {k: v for k, v in settings.items() if k != "strategy"}
    with torch.no_grad():
        theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos,
                              pad_token_id=PAD, do_sample=False, **hf)
    assert ours == cut(theirs, 1, eos)  # theirs start with the decoder start token


@pytest.mark.parametrize("pair", ["gpt2"], indirect=True)
def test_single_prompt_api_matches_the_batch_api(pair):
    _, model = pair
    config = GenerationConfig(max_new_tokens=9, strategy="greedy")
    assert generate(model, PROMPTS[1], config) == generate_batch(model, [PROMPTS[1]], config).sequences[0]
    beam = GenerationConfig(max_new_tokens=9, strategy="beam", num_beams=3)
    assert generate(model, PROMPTS[1], beam) == generate_batch(model, [PROMPTS[1]], beam).sequences[0]
