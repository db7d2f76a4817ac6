"""GPT-2 checkpoints load with the same logits as transformers; safetensors, .bin and shards."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, write_tokenizer  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402


def tiny_gpt2(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=99, n_positions=64, **overrides)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("save", [{}, {"safe_serialization": False}, {"max_shard_size": "100KB"}],
                         ids=["safetensors", "bin", "sharded"])
def test_gpt2_logits_match(tmp_path, save):
    ref = tiny_gpt2()
    ref.save_pretrained(tmp_path, **save)
    write_tokenizer(tmp_path, 99)
    loaded = load_hf(tmp_path)
    assert loaded.family == "gpt2" and loaded.tokenizer is not None
    ids, mask = padded_batch(99, [10, 7, 3])
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask.long()).logits
        ours = loaded.model(ids, attention_mask=mask)
    assert max_diff(ours, theirs, mask) <= TOL


def test_gpt2_untied_head_and_relu(tmp_path):
    ref = tiny_gpt2(tie_word_embeddings=False, activation_function="relu")
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert not loaded.model_config.tie_embeddings
    ids, mask = padded_batch(99, [9, 9])
    with torch.no_grad():
        assert max_diff(loaded.model(ids), ref(ids).logits) <= TOL
