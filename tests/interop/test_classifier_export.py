"""Decoder classifiers load from and export to GPT2/LlamaForSequenceClassification with equal
logits; fine-tuned classifier runs convert with their label names."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, write_tokenizer  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402
from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop.export import export_hf  # noqa: E402
from lmlab.models import DecoderClassifier, ModelConfig, build_model  # noqa: E402
from lmlab.tokenizers import load_pretrained_tokenizer  # noqa: E402

VOCAB = 99


def tiny_gpt2_classifier():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                     num_labels=3, pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(config).eval()


def tiny_llama_classifier():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      num_labels=3, pad_token_id=0)
    return transformers.LlamaForSequenceClassification(config).eval()


@pytest.mark.parametrize("make", [tiny_gpt2_classifier, tiny_llama_classifier], ids=["gpt2", "llama"])
def test_a_sequence_classification_checkpoint_loads_with_its_score_head(tmp_path, make):
    reference = make()
    reference.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert isinstance(loaded.model, DecoderClassifier) and loaded.model_config.num_labels == 3
    ids, mask = padded_batch(VOCAB, [10, 7, 3])
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask.long()).logits  # (B, 3): pooled at the last non-pad token
        ours = loaded.model(ids, attention_mask=mask)
    assert max_diff(ours, theirs) <= TOL


DECODERS = {
    "gpt2": {},
    "llama": {"position": "rope", "norm": "rmsnorm", "ffn": "swiglu", "bias": False, "n_kv_heads": 2},
}


@pytest.mark.parametrize("family", DECODERS)
def test_a_decoder_classifier_exports_with_equal_logits(tmp_path, family):
    config = ModelConfig(backbone="decoder", head="classifier", num_labels=3, vocab_size=VOCAB, n_layer=2, n_head=4,
                         d_model=64, context_length=64, dropout=0.0, **DECODERS[family])
    torch.manual_seed(0)
    model = build_model(config).eval()
    write_tokenizer(tmp_path / "tok", VOCAB)
    tokenizer = load_pretrained_tokenizer(tmp_path / "tok")
    summary = export_hf(model, config, tokenizer, tmp_path / "hf", labels=["a", "b", "c"])
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "a", "1": "b", "2": "c"}
    cls = {"gpt2": transformers.GPT2ForSequenceClassification, "llama": transformers.LlamaForSequenceClassification}
    assert hf_config["architectures"] == [cls[family].__name__] and summary["format"] == family
    reference = cls[family].from_pretrained(tmp_path / "hf").eval()
    ids, mask = padded_batch(VOCAB, [10, 7, 3])
    ids = ids.masked_fill(~mask, hf_config["pad_token_id"])
    with torch.no_grad():
        assert max_diff(model(ids, attention_mask=mask), reference(ids, attention_mask=mask.long()).logits) <= TOL


def test_a_mean_pooling_encoder_classifier_is_refused_in_one_line(tmp_path):
    config = ModelConfig(backbone="encoder", head="classifier", pooling="mean", vocab_size=VOCAB, n_layer=1, n_head=2,
                         d_model=32, norm_placement="post", bias=True)
    with pytest.raises(LmlabError, match="pooling='mean' has no \\*ForSequenceClassification equivalent"):
        export_hf(build_model(config), config, None, tmp_path / "hf")
