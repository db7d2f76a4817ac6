"""Reading GGUF files: metadata, tokenizer, tensors (float and quantised) and Llama's Q/K permutation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.interop.gguf_file import GGUFFile, unpermute_qk  # noqa: E402
from lmlab.interop.weights import Target, load_into  # noqa: E402

N_HEAD, N_KV_HEAD, HEAD_DIM = 4, 2, 8
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
TOKENS = ["<unk>", "<s>", "</s>", "▁a", "▁b", "a", "b", "▁"] + [
    f"<0x{byte:02X}>" for byte in range(256)
]
# Bytes per block of the K-quants (written as raw random blocks: gguf can only dequantise them).
K_QUANT_BLOCK = {Q.Q4_K: 144, Q.Q6_K: 210}


def converter_permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf.py ``LlamaModel.permute``, as written there."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


D = N_HEAD * HEAD_DIM
HF_Q = torch.from_numpy(rand(D, D, seed=3))  # q_proj / k_proj as Hugging Face stores them
HF_K = torch.from_numpy(rand(N_KV_HEAD * HEAD_DIM, D, seed=4))


@pytest.fixture(scope="module")
def originals() -> dict[str, np.ndarray]:
    """The float32 values each tensor of the test file was written from (PyTorch order)."""
    d = D
    return {
        "token_embd.weight": rand(12, d, seed=1),
        "blk.0.attn_norm.weight": rand(d, seed=2),
        "blk.0.attn_q.weight": converter_permute(HF_Q, N_HEAD).numpy(),
        "blk.0.attn_k.weight": converter_permute(HF_K, N_KV_HEAD).numpy(),
        "blk.0.ffn_up.weight": rand(64, d, seed=5),
        "blk.0.ffn_down.weight": rand(d, 64, seed=6),
        "blk.0.ffn_gate.weight": rand(2, 3, 64, seed=7),
        "output.weight": rand(12, 64, seed=8),
        "blk.0.attn_v.weight": rand(d, 256, seed=9),
        "blk.0.attn_output.weight": rand(d, 256, seed=10),
    }


STORED_AS = {
    "token_embd.weight": Q.F32,
    "blk.0.attn_norm.weight": Q.F32,
    "blk.0.attn_q.weight": Q.F16,
    "blk.0.attn_k.weight": Q.BF16,
    "blk.0.ffn_up.weight": Q.Q8_0,
    "blk.0.ffn_down.weight": Q.Q4_0,
    "blk.0.ffn_gate.weight": Q.Q4_1,
    "output.weight": Q.Q5_1,
}
METADATA = {
    "llama.block_count": 1,
    "llama.embedding_length": N_HEAD * HEAD_DIM,
    "llama.attention.head_count": N_HEAD,
    "llama.attention.head_count_kv": N_KV_HEAD,
    "llama.rope.freq_base": 10000.0,
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": TOKENS,
    "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0] + [0.0] * 256,
    "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1] + [6] * 256,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 0,
    "tokenizer.ggml.add_bos_token": True,
    "tokenizer.chat_template": TEMPLATE,
    "general.name": "tiny Ünïcödé",
}


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory, originals) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in METADATA.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    for name, qtype in STORED_AS.items():
        values = originals[name]
        writer.add_tensor(
            name, quantize(values, qtype), raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype
        )
    rng = np.random.default_rng(0)
    for name, qtype in zip(["blk.0.attn_v.weight", "blk.0.attn_output.weight"], K_QUANT_BLOCK):
        rows, columns = originals[name].shape
        raw = rng.integers(0, 256, (rows, columns // 256 * K_QUANT_BLOCK[qtype]), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def file(gguf_path) -> GGUFFile:
    return GGUFFile(gguf_path)


def test_metadata_is_plain_python(file):
    assert file.version == 3
    assert file.architecture == "llama"
    assert file.arch_value("attention.head_count_kv") == N_KV_HEAD
    for key, value in METADATA.items():
        assert (
            file.metadata[key] == pytest.approx(value)
            if isinstance(value, float)
            else file.metadata[key] == value
        )
    assert all(type(token) is str for token in file.metadata["tokenizer.ggml.tokens"])
    assert file.chat_template == TEMPLATE
    with pytest.raises(LmlabError, match="no metadata key 'llama.context_length'"):
        file.arch_value("context_length")


def test_tensor_shapes_are_in_pytorch_order(file, originals):
    assert file.names() == list(STORED_AS) + ["blk.0.attn_v.weight", "blk.0.attn_output.weight"]
    for name, values in originals.items():
        info = file.info(name)
        assert info.shape == values.shape and info.dtype == torch.float32
        assert file.get(name).shape == values.shape
    assert file.tensor_type("blk.0.ffn_up.weight") == "Q8_0"


# Largest error of each type on standard-normal data (absolute, relative to the row's max).
TOLERANCE = {
    Q.F32: 0.0,
    Q.F16: 2e-3,
    Q.BF16: 2e-2,
    Q.Q8_0: 1e-2,
    Q.Q4_0: 0.15,
    Q.Q4_1: 0.15,
    Q.Q5_1: 0.08,
}


@pytest.mark.parametrize("name", list(STORED_AS))
def test_dequantised_tensors_match_the_originals(file, originals, name):
    values = torch.from_numpy(originals[name])
    read = file.get(name)
    assert read.dtype == torch.float32
    scale = values.abs().amax(dim=-1, keepdim=True)
    assert ((read - values).abs() / scale).max().item() <= TOLERANCE[STORED_AS[name]]


@pytest.mark.parametrize(
    "name", ["blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight"]
)
def test_dequantised_tensors_match_the_gguf_reference(file, gguf_path, name):
    reader = gguf.GGUFReader(gguf_path)
    stored = next(tensor for tensor in reader.tensors if tensor.name == name)
    expected = torch.from_numpy(dequantize(stored.data, stored.tensor_type).copy())
    torch.testing.assert_close(file.get(name), expected, rtol=0, atol=0, equal_nan=True)


def test_iter_tensors_yields_every_tensor_once(file):
    assert [name for name, _ in file.iter_tensors()] == file.names()


def test_tokenizer_from_metadata(file):
    tokenizer = file.tokenizer()
    assert tokenizer.special_tokens == {"bos": 1, "eos": 2, "unk": 0}
    ids = tokenizer.encode("a b ab", add_special_tokens=True)
    assert ids == [1, 3, 4, 3, 6]  # <s> ▁a ▁b ▁a b
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a b ab"
    assert tokenizer.encode("é") == [7, 3 + 5 + 0xC3, 3 + 5 + 0xA9]  # ▁ then byte fallback
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|user|>hi</s>"


# ---------------------------------------------------------------- Llama Q/K permutation


@pytest.mark.parametrize("n_head, rows, columns", [(4, 32, 32), (2, 16, 32), (4, 32, 0)])
def test_unpermute_inverts_the_converter_permutation(n_head, rows, columns):
    weight = torch.randn(rows, columns) if columns else torch.randn(rows)  # a weight, or a bias
    permuted = converter_permute(weight, n_head)
    assert not torch.equal(permuted, weight)
    torch.testing.assert_close(unpermute_qk(permuted, n_head), weight, rtol=0, atol=0)


def test_unpermute_regroups_rotary_halves():
    """Per head, the converter interleaves the two rotary halves (x0, x_{h/2}, x1, ...)."""
    head_dim = 4
    rows = torch.arange(2 * head_dim, dtype=torch.float32).reshape(-1, 1)
    assert converter_permute(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert unpermute_qk(torch.tensor([0.0, 2, 1, 3, 4, 6, 5, 7]), 2).tolist() == list(range(8))


def test_unpermute_rejects_bad_head_counts():
    with pytest.raises(LmlabError, match="rows must be a multiple of 2 × heads"):
        unpermute_qk(torch.zeros(12, 4), 4)


def test_load_into_from_gguf_with_unpermuted_qk(file):
    """HF-layout q/k are recovered from the file's (converter-permuted) tensors via load_into."""
    target = {"q": torch.empty(D, D), "k": torch.empty(N_KV_HEAD * HEAD_DIM, D)}
    name_map = {
        "blk.0.attn_q.weight": Target("q", transform=lambda t: unpermute_qk(t, N_HEAD)),
        "blk.0.attn_k.weight": Target("k", transform=lambda t: unpermute_qk(t, N_KV_HEAD)),
    }
    load_into(
        target,
        file,
        name_map,
        ignore=["token_embd.*", "output.*", "blk.0.ffn_*", "blk.0.attn_[nvo]*"],
    )
    torch.testing.assert_close(target["q"], HF_Q, rtol=1e-3, atol=1e-3)  # stored as F16
    torch.testing.assert_close(target["k"], HF_K, rtol=1e-2, atol=1e-2)  # stored as BF16


# ---------------------------------------------------------------- errors


def test_not_gguf_truncated_and_missing_files(tmp_path, gguf_path):
    with pytest.raises(LmlabError, match="does not exist"):
        GGUFFile(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(LmlabError, match="not a readable GGUF file"):
        GGUFFile(tmp_path / "junk.gguf")
    data = gguf_path.read_bytes()
    for cut in (16, len(data) // 3, len(data) - 1000):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(LmlabError, match="truncated or not GGUF"):
            GGUFFile(tmp_path / "cut.gguf")


def test_unknown_tensor_name(file):
    with pytest.raises(LmlabError, match="has no tensor 'nope'"):
        file.get("nope")
