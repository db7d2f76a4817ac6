"""lmlab encoder-decoders → Hugging Face BART / T5 directories that transformers loads with the same
logits (padded encoder input, arbitrary decoder input), that lmlab reads back, and a clear error for
encoder-decoders with no Hugging Face equivalent."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from parity_helpers import TOL, max_diff, padded_batch, perturbed  # noqa: E402

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop import export_hf, load_hf  # noqa: E402
from lmlab.models import ModelConfig, build_model  # noqa: E402
from lmlab.tokenizers import CharTokenizer  # noqa: E402

TOKENIZER = CharTokenizer.from_text(
    "hello world\nthe quick brown fox", unk=True, special_tokens={"pad": "<pad>", "eos": "</s>"}
)
BASE = dict(backbone="encoder-decoder", vocab_size=TOKENIZER.vocab_size, n_layer=2, n_head=4, d_model=32,
            d_ff=48, context_length=40)
BART = dict(position="learned", norm="layernorm", norm_placement="post", bias=True)
T5 = dict(position="t5", norm="rmsnorm", norm_placement="pre", bias=False, norm_eps=1e-6,
          t5_num_buckets=8, t5_max_distance=20)


@pytest.mark.parametrize("overrides,kind", [
    ({**BART, "ffn": "gelu"}, "bart"),
    ({**BART, "ffn": "relu", "tie_embeddings": False, "head_bias": True}, "bart"),
    ({**T5, "ffn": "relu"}, "t5"),
    ({**T5, "ffn": "geglu-tanh", "tie_embeddings": False, "head_size": 6}, "t5"),
], ids=["bart-gelu-tied", "bart-relu-untied-bias", "t5-v1.0", "t5-v1.1-narrow-heads"])
def test_seq2seq_export_loads_in_transformers_with_same_logits(tmp_path, overrides, kind):
    torch.manual_seed(0)
    config = ModelConfig(**{**BASE, **overrides})
    model = perturbed(build_model(config))
    summary = export_hf(model, config, TOKENIZER, tmp_path)
    assert summary["format"] == kind
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == kind
    start_role = "eos" if kind == "bart" else "pad"
    assert written["decoder_start_token_id"] == TOKENIZER.special_tokens[start_role]

    ref = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(ref).__name__ == {"bart": "BartForConditionalGeneration", "t5": "T5ForConditionalGeneration"}[kind]
    ids, mask = padded_batch(config.vocab_size, [30, 9, 17], low=2)  # T5: distances reach the log buckets
    dec, _ = padded_batch(config.vocab_size, [25, 25, 25], seed=1, low=2)
    with torch.no_grad():
        ours = model(ids, dec, attention_mask=mask)
        theirs = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
        encoded = ref.get_encoder()(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert max_diff(model.encode(ids, mask), encoded, mask) <= TOL
    assert max_diff(ours, theirs) <= TOL

    back = load_hf(tmp_path)  # and lmlab reads its own export
    assert back.family == kind
    with torch.no_grad():
        assert max_diff(back.model(ids, dec, attention_mask=mask), ours) <= TOL


@pytest.mark.parametrize("overrides,named", [
    ({**BART, "position": "sinusoidal"}, "position='sinusoidal'"),
    ({**T5, "ffn": "selu"}, "ffn='selu'"),
    ({**T5, "share_embeddings": False}, "share_embeddings=False"),
    ({**BART, "norm_eps": 1e-6}, "norm_eps"),
    ({**T5, "n_kv_heads": 2}, "n_kv_heads=2"),
], ids=["sinusoidal", "t5-selu", "unshared", "bart-eps", "t5-gqa"])
def test_seq2seq_without_hf_equivalent_is_refused(tmp_path, overrides, named):
    config = ModelConfig(**{**BASE, **overrides})
    with pytest.raises(LmlabError, match="cannot export this model") as info:
        export_hf(build_model(config), config, None, tmp_path)
    message = str(info.value)
    assert named in message and "BART equivalent" in message and "T5 equivalent" in message
    assert "GPT-2 equivalent" not in message  # only the encoder-decoder formats are tried


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_convert_cli_round_trips_hf_seq2seq(tmp_path, capsys, kind):
    """HF → lmlab run → ``lmlab convert RUN --to hf``: T5 v1.0's tied, rescaled head comes back
    untied; BART's scale_embedding comes back folded into the embedding."""
    from parity_helpers import write_tokenizer

    from lmlab.cli import main

    torch.manual_seed(0)
    if kind == "t5":
        ref = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=40, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            relative_attention_max_distance=20, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0))
    else:
        ref = transformers.BartForConditionalGeneration(transformers.BartConfig(
            vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40,
            scale_embedding=True, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2))
    ref.eval()
    ref.save_pretrained(tmp_path / "src")
    write_tokenizer(tmp_path / "src", 40)
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == kind
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    ids, mask = padded_batch(40, [12, 7], low=3)
    dec, _ = padded_batch(40, [9, 9], seed=1, low=3)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
        got = back(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec).logits
    assert max_diff(got, expected) <= TOL
