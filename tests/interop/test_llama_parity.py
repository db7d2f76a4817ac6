"""Llama checkpoints (RoPE theta, RMSNorm, SwiGLU, GQA, tied/untied) load with the same logits."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402


def tiny_llama(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=99, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rope_theta=500.0, rms_norm_eps=1e-5)
    settings.update(overrides)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings)).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match(tmp_path, tied):
    ref = tiny_llama(tie_word_embeddings=tied)
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    config = loaded.model_config
    assert (config.n_kv_heads, config.rope_base, config.tie_embeddings) == (2, 500.0, tied)
    ids, mask = padded_batch(99, [12, 5, 8])
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask.long()).logits
        ours = loaded.model(ids, attention_mask=mask)
    assert max_diff(ours, theirs, mask) <= TOL


def test_llama_sharded_bin(tmp_path):
    ref = tiny_llama(num_key_value_heads=4)
    ref.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="100KB")
    loaded = load_hf(tmp_path)
    ids, _ = padded_batch(99, [6, 6])
    with torch.no_grad():
        assert max_diff(loaded.model(ids), ref(ids).logits) <= TOL


def test_llama_explicit_head_dim(tmp_path):
    ref = tiny_llama(head_dim=32)  # heads × head_dim ≠ hidden_size
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert loaded.model_config.head_dim == 32
    ids, mask = padded_batch(99, [7, 4])
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask.long()).logits
        assert max_diff(loaded.model(ids, attention_mask=mask), theirs, mask) <= TOL
