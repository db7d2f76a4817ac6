"""BART (offset-2 learned positions, post-norm, layernorm_embedding, final_logits_bias) parity."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.interop import load_hf  # noqa: E402


def tiny_bart(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=99, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    settings.update(overrides)
    model = transformers.BartForConditionalGeneration(transformers.BartConfig(**settings)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # non-zero, so the head's bias is really checked
    return model


@pytest.mark.parametrize("overrides", [{}, {"scale_embedding": True}], ids=["plain", "scaled"])
def test_bart_logits_match(tmp_path, overrides):
    ref = tiny_bart(**overrides)
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    ids, mask = padded_batch(99, [11, 6, 9], low=3)
    dec, _ = padded_batch(99, [7, 7, 7], seed=1, low=3)
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
        ours = loaded.model(ids, dec, attention_mask=mask)
    assert max_diff(ours, theirs) <= TOL
