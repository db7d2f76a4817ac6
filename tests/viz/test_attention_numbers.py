"""The weights an attention view embeds equal ``transformers``' ``output_attentions`` for tiny
random GPT-2, BERT, T5 and BART models (encoder, decoder and cross-attention); every softmax row
sums to 1; the scores the neuron view shows are q·k/√d (plus the position bias) of the queries and
keys transformers computes, recomputed in float64."""

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from attention_models import bart_dir, gpt2_dir, gpt2_queries_keys, make_view  # noqa: E402
from tiny_models import bert_mlm_dir, t5_dir  # noqa: E402

from lmlab.training.run import load_run  # noqa: E402

TOL = 1e-4


def assert_weights_equal(stack: dict, reference: tuple) -> None:
    """``stack``'s weights (L, H, T, S) against transformers' per-layer (1, H, T, S) tensors."""
    ours = np.array(stack["weights"])
    theirs = np.stack([layer[0].double().numpy() for layer in reference])
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=TOL)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=TOL)


def ids_of(model_dir, text):
    return load_run(model_dir, print).tokenizer.encode(text)


def test_gpt2_weights_and_scores_match(tmp_path):
    model_dir = gpt2_dir(tmp_path / "gpt2")
    data = make_view(model_dir, tmp_path / "view.html", "--text", "w1 w2 w3 w4 w5")
    ids = ids_of(model_dir, "w1 w2 w3 w4 w5")
    reference = transformers.GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = reference(torch.tensor([ids]), output_attentions=True).attentions
    (stack,) = data["stacks"]
    assert stack["name"] == "decoder" and not stack["has_position_bias"]
    assert_weights_equal(stack, attentions)
    for layer, (q, k) in enumerate(gpt2_queries_keys(model_dir, ids)):
        np.testing.assert_allclose(np.array(stack["queries"][layer]), q.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.array(stack["keys"][layer]), k.numpy(), atol=1e-5)
        dot = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).numpy()  # (H, T, T), float64
        scores = np.array(stack["scores"][layer], dtype=float)  # None (masked) → nan
        visible = np.tril(np.ones(dot.shape[-2:], dtype=bool))
        assert np.isnan(scores[:, ~visible]).all()
        np.testing.assert_allclose(scores[:, visible], dot[:, visible], atol=1e-5)


def test_bert_sentence_pair_weights_match(tmp_path):
    model_dir = bert_mlm_dir(tmp_path / "bert")
    data = make_view(model_dir, tmp_path / "view.html", "--text", "the world is", "--text-b", "a fact")
    ids = ids_of(model_dir, "the world is") + ids_of(model_dir, "a fact")
    assert data["segment_b_from"] == {"encoder": len(ids_of(model_dir, "the world is"))}
    assert data["tokens"]["encoder"] == ["the", "world", "is", "a", "fact"]
    reference = transformers.BertForMaskedLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():  # lmlab's BERT adds token type 0 everywhere, as transformers does by default
        attentions = reference(torch.tensor([ids]), output_attentions=True).attentions
    (stack,) = data["stacks"]
    assert_weights_equal(stack, attentions)


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("decoded", ["text-b", "generated"])
def test_encoder_decoder_weights_match(tmp_path, family, decoded):
    make_dir, cls = {"t5": (t5_dir, transformers.T5ForConditionalGeneration),
                     "bart": (bart_dir, transformers.BartForConditionalGeneration)}[family]
    source, target = {"t5": ("the world is everything", "a fact"), "bart": ("w1 w2 w3 w4", "w5 w6 w7")}[family]
    model_dir = make_dir(tmp_path / family)
    output = ["--text-b", target] if decoded == "text-b" else ["--generate", "3"]
    data = make_view(model_dir, tmp_path / "view.html", "--text", source, *output, "--layers", "0", "--heads", "1")
    reference = cls.from_pretrained(model_dir, attn_implementation="eager").eval()
    decoder_ids = data["ids"]["decoder"]
    assert decoder_ids[0] == reference.config.decoder_start_token_id
    if decoded == "text-b":
        assert decoder_ids[1:] == ids_of(model_dir, target) and data["generated_from"] == {}
    else:
        assert data["generated_from"] == {"decoder": 1} and 2 <= len(decoder_ids) <= 4
    with torch.no_grad():
        out = reference(input_ids=torch.tensor([ids_of(model_dir, source)]), decoder_input_ids=torch.tensor([decoder_ids]),
                        output_attentions=True)
    stacks = {stack["name"]: stack for stack in data["stacks"]}
    assert data["layers"] == [0] and data["heads"] == [1]
    for name, theirs in [("encoder", out.encoder_attentions), ("decoder", out.decoder_attentions),
                         ("cross", out.cross_attentions)]:
        assert_weights_equal(stacks[name], tuple(layer[:, 1:2] for layer in theirs[:1]))
    # T5's relative position bias is in the self-attention scores; cross-attention has none
    assert stacks["encoder"]["has_position_bias"] == (family == "t5")
    assert not stacks["cross"]["has_position_bias"]


def test_scores_with_position_bias_still_give_the_weights(tmp_path):
    """For T5, softmax(scores) in float64 is the embedded weights: the neuron view's bias column
    (score − q·k/√d) is what the softmax really added."""
    data = make_view(t5_dir(tmp_path / "t5"), tmp_path / "view.html", "--text", "the world is the case")
    stack = data["stacks"][0]
    scores = np.array(stack["scores"], dtype=float)  # (L, H, T, S)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(weights / weights.sum(axis=-1, keepdims=True), np.array(stack["weights"]), atol=TOL)
    q, k = np.array(stack["queries"]), np.array(stack["keys"])
    bias = scores - q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    assert np.abs(bias).max() > 1e-3


def test_alibi_bias_is_in_the_weights_the_view_shows():
    """An lmlab ALiBi decoder: the trace's scores are q·k/√d plus −slope·distance, and the weights
    their causal softmax (float64 recomputation)."""
    from lmlab.generation.attention_trace import trace_attention
    from lmlab.models import ModelConfig, build_model
    from lmlab.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdef")
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16,
                                    context_length=16, position="alibi")).eval()
    trace = trace_attention(model, tokenizer, "abcdef")
    (stack,) = trace.stacks
    assert stack.has_position_bias
    q, k = stack.queries.double(), stack.keys.double()  # (L, H, T, D), (L, H, S, D)
    T = q.size(2)
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).double()  # (T, S): i − j
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / 2) for h in range(2)], dtype=torch.float64)  # ALiBi, 2 heads
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) - slopes[None, :, None, None] * distance
    scores = scores.masked_fill(distance < 0, float("-inf"))
    torch.testing.assert_close(stack.weights.double(), scores.softmax(dim=-1), atol=1e-5, rtol=0)
