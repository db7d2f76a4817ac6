"""T5 v1.0 (ReLU, tied head) and v1.1 (gated-GELU, untied) load with the same decoder logits."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402


def tiny_t5(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=99, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    decoder_start_token_id=0, pad_token_id=0)
    settings.update(overrides)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**settings)).eval()


@pytest.mark.parametrize("variant", [
    {"feed_forward_proj": "relu"},
    {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    {"feed_forward_proj": "gated-gelu", "d_kv": 8},  # heads × d_kv ≠ d_model, as in flan-t5-small
], ids=["v1.0", "v1.1", "v1.1-narrow-heads"])
def test_t5_logits_match(tmp_path, variant):
    ref = tiny_t5(**variant)
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    ids, mask = padded_batch(99, [14, 9, 30])  # distances past max_exact reach the log buckets
    dec, _ = padded_batch(99, [25, 25, 25], seed=1)
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
        ours = loaded.model(ids, dec, attention_mask=mask)
        encoded = ref.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(loaded.model.encode(ids, mask), encoded, mask) <= TOL
    assert max_diff(ours, theirs) <= TOL
