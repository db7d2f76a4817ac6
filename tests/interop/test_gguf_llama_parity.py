"""A tiny Llama written as GGUF (F32, F16, Q8_0, Q4_0; Q/K permuted as llama.cpp does) loads with
the logits of transformers' Llama holding the dequantised weights; tokenizer and template too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from parity_helpers import TOL, max_diff, padded_batch  # noqa: E402

from lmlab.interop import load_gguf, load_pretrained  # noqa: E402

N_HEAD, N_KV, D, FF, LAYERS = 4, 2, 64, 128, 2
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
TOKENS = ["<unk>", "<s>", "</s>", "▁a", "▁b", "a", "b", "▁"] + [f"<0x{b:02X}>" for b in range(256)]
VOCAB = len(TOKENS)
HF_TO_GGUF = {
    "model.embed_tokens.weight": ("token_embd.weight", Q.F32),
    "model.norm.weight": ("output_norm.weight", Q.F32),
    "lm_head.weight": ("output.weight", Q.Q8_0),
}
LAYER = {
    "self_attn.q_proj.weight": ("attn_q.weight", Q.Q8_0),
    "self_attn.k_proj.weight": ("attn_k.weight", Q.Q8_0),
    "self_attn.v_proj.weight": ("attn_v.weight", Q.F16),
    "self_attn.o_proj.weight": ("attn_output.weight", Q.Q4_0),
    "mlp.gate_proj.weight": ("ffn_gate.weight", Q.Q4_0),
    "mlp.up_proj.weight": ("ffn_up.weight", Q.Q8_0),
    "mlp.down_proj.weight": ("ffn_down.weight", Q.F32),
    "input_layernorm.weight": ("attn_norm.weight", Q.F32),
    "post_attention_layernorm.weight": ("ffn_norm.weight", Q.F32),
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute``."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def inverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(path to the GGUF file, transformers Llama holding the dequantised weights)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=64,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    ref = transformers.LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", LAYERS)
    writer.add_uint32("llama.embedding_length", D)
    writer.add_uint32("llama.feed_forward_length", FF)
    writer.add_uint32("llama.attention.head_count", N_HEAD)
    writer.add_uint32("llama.attention.head_count_kv", N_KV)
    writer.add_uint32("llama.context_length", 64)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", TOKENS)
    writer.add_array("tokenizer.ggml.scores", [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0] + [0.0] * 256)
    writer.add_array("tokenizer.ggml.token_type", [2, 3, 3, 1, 1, 1, 1, 1] + [6] * 256)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_string("tokenizer.chat_template", TEMPLATE)
    names = dict(HF_TO_GGUF)
    for i in range(LAYERS):
        names.update({f"model.layers.{i}.{k}": (f"blk.{i}.{v[0]}", v[1]) for k, v in LAYER.items()})
    state = ref.state_dict()
    dequantised = {}
    for hf_name, (name, qtype) in names.items():
        values = state[hf_name].numpy()
        heads = N_HEAD if "q_proj" in hf_name else N_KV if "k_proj" in hf_name else None
        if heads:
            values = permute(values, heads)
        stored = quantize(values, qtype)
        writer.add_tensor(name, stored, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        back = dequantize(stored, qtype).astype(np.float32).reshape(values.shape)
        dequantised[hf_name] = torch.from_numpy(inverse_permute(back, heads) if heads else back)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ref.load_state_dict(dequantised, strict=False)
    return path, ref


def test_gguf_llama_logits_match_dequantised_reference(written):
    path, ref = written
    loaded = load_gguf(path)
    config = loaded.model_config
    assert (config.n_layer, config.n_kv_heads, config.d_ff, config.context_length) == (LAYERS, N_KV, FF, 64)
    assert not config.tie_embeddings and loaded.family == "gguf-llama"
    ids, mask = padded_batch(VOCAB, [12, 5, 9])
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask.long()).logits
        ours = loaded.model(ids, attention_mask=mask)
    assert max_diff(ours, theirs, mask) <= TOL


def test_gguf_tokenizer_and_chat_template(written):
    path, _ = written
    loaded = load_pretrained(path)
    assert loaded.tokenizer.encode("a b", add_special_tokens=True) == [1, 3, 4]
    rendered = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert rendered == "<|user|>hi<|assistant|>"


def test_cli_accepts_a_gguf_file(written, capsys):
    from lmlab.cli import main
    from lmlab.training.run import load_run

    path, ref = written
    run = load_run(path)
    assert run.state["family"] == "gguf-llama" and run.config.model.position == "rope"
    assert main(["info", str(path)]) == 0
    assert '"backbone": "decoder"' in capsys.readouterr().out
    assert main(["generate", str(path), "--prompt", "a b", "--strategy", "greedy", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("a b")


def test_convert_gguf_to_a_run_directory(written, tmp_path):
    from lmlab.cli import main
    from lmlab.training.run import load_run

    path, ref = written
    assert main(["convert", str(path), str(tmp_path / "run")]) == 0
    run = load_run(tmp_path / "run")
    assert run.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|user|>hi<|assistant|>"
    ids, mask = padded_batch(VOCAB, [6, 6])
    with torch.no_grad():
        assert max_diff(run.model(ids), ref(ids).logits) <= TOL
