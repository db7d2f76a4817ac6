"""PEGASUS (pre-norm BART layers, sin/cos-halves sinusoidal positions, final_logits_bias) parity:
logits and greedy generations equal transformers', with and without ``scale_embedding``."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.generation import GenerationConfig, generate_seq2seq  # noqa: E402
from lmlab.interop import load_hf  # noqa: E402
from lmlab.layers.positional import sinusoidal_table  # noqa: E402


def tiny_pegasus(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=99, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64,
                    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, activation_function="relu")
    settings.update(overrides)
    model = transformers.PegasusForConditionalGeneration(transformers.PegasusConfig(**settings)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()  # non-zero, so the head's bias is really checked
    return model


@pytest.mark.parametrize("overrides", [{}, {"scale_embedding": True}], ids=["plain", "scaled"])
def test_pegasus_logits_match(tmp_path, overrides):
    ref = tiny_pegasus(**overrides)
    ref.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path)
    assert loaded.model_config.position == "sinusoidal-halves" and loaded.model_config.norm_placement == "pre"
    ids, mask = padded_batch(99, [11, 6, 9], low=3)
    dec, _ = padded_batch(99, [7, 7, 7], seed=1, low=3)
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
        ours = loaded.model(ids, dec, attention_mask=mask)
    assert max_diff(ours, theirs) <= TOL


def test_pegasus_greedy_generation_matches(tmp_path):
    ref = tiny_pegasus(scale_embedding=True)
    ref.save_pretrained(tmp_path)
    ref.generation_config.forced_eos_token_id = None  # PEGASUS forces EOS at the length limit; lmlab does not
    loaded = load_hf(tmp_path)
    source = torch.randint(3, 99, (1, 12), generator=torch.Generator().manual_seed(2))
    theirs = ref.generate(source, max_new_tokens=10, do_sample=False, num_beams=1, min_new_tokens=10)[0, 1:].tolist()
    ours = generate_seq2seq(loaded.model, [source[0].tolist()], GenerationConfig(max_new_tokens=10), 0, 0)
    assert ours.sequences[0] == theirs


def test_the_halves_table_is_pegasus_positions():
    ref = tiny_pegasus()
    table = ref.model.encoder.embed_positions.weight  # transformers' own sinusoids
    torch.testing.assert_close(sinusoidal_table(0, table.size(0), table.size(1), halves=True), table)
