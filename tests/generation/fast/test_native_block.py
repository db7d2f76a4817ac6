"""The native decoding block against the block's own modules, and where it steps aside."""

import pytest
import torch

from lmlab.generation import GenerationConfig, generate_batch
from lmlab.generation.fast import block as native_block
from lmlab.generation.fast.block import NativeBlock, runs_natively
from lmlab.generation.fast.modules import NativeLinear, adopt, int8_weights
from lmlab.generation.fast.swap import decoding_twin
from lmlab.kernels import load_native, native_status, quantize_weight
from lmlab.layers.kv_cache import KVCache
from lmlab.layers.masks import build_attention_mask
from lmlab.layers.positional import RotaryPositionalEncoding
from lmlab.models import ModelConfig, build_model
from lmlab.models.blocks import TransformerBlock
from lmlab.models.config import MoEConfig

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")

VARIANTS = {
    "gpt2-like": dict(norm="layernorm", ffn="gelu-tanh", bias=True),
    "bert-gelu": dict(norm="layernorm", ffn="gelu", bias=False),
    "llama-like": dict(norm="rmsnorm", ffn="swiglu", bias=False, n_kv_heads=2),
    "relu": dict(norm="layernorm", ffn="relu", bias=True, n_kv_heads=1),
    "geglu": dict(norm="rmsnorm", ffn="geglu", bias=True),
    "llama-rope": dict(norm="rmsnorm", ffn="swiglu", bias=False, n_kv_heads=2, position="rope"),
}


def config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, context_length=40, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def random_block(cfg: ModelConfig) -> TransformerBlock:
    torch.manual_seed(0)
    block = TransformerBlock(cfg, 0).eval()
    with torch.no_grad():
        for p in block.parameters():  # norms and biases away from their 1/0 start
            p.add_(torch.randn_like(p) * 0.2)
    return block


def fused_step(block, x, cache, pos, mask, rotary=None):
    """The block's step in the native kernel, or None where it does not apply."""
    return adopt(NativeBlock, block)._native_step(x, mask, rotary, cache, pos)


def by_modules(block, x, cache, pos, mask, rotary=None):
    x = x + block.attn(block.attn_norm(x), cache, pos, mask, rotary)
    return x + block.ffn(block.ffn_norm(x))


def run_steps(block, step, chunks, padding=None, rope=None):
    """Feed chunks of a random sequence through ``step`` with a cache; the outputs, concatenated.
    rope: a RoPE encoding, applied per position (per row, from the padding, when there is one)."""
    x = torch.randn(2, sum(chunks), block.attn.out_proj.out_features, generator=torch.Generator().manual_seed(1))
    cache = KVCache(2, block.attn.n_kv_heads, 24, block.attn.head_dim)
    outputs, pos = [], 0
    for size in chunks:
        end = pos + size
        mask = rotary = None
        if padding is not None:
            mask = build_attention_mask(size, end, causal=True, key_padding=padding[:, :end])
        if rope is not None:
            position_ids = None if padding is None else (padding.long().cumsum(-1) - 1).clamp(min=0)[:, pos:end]
            rotary = rope.rotary(pos, size, position_ids)
        outputs.append(step(block, x[:, pos:end], cache, pos, mask, rotary))
        pos = end
    return torch.cat(outputs, 1), cache


@native
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("rope_fraction", [None, 1.0, 0.5])
def test_native_block_equals_its_modules(variant, padded, rope_fraction):
    block = random_block(config(**VARIANTS[variant]))
    rope = None if rope_fraction is None else RotaryPositionalEncoding(block.attn.head_dim, 24, fraction=rope_fraction)
    padding = None
    if padded:
        padding = torch.ones(2, 24, dtype=torch.bool)
        padding[1, :3] = False  # the second row is left-padded
    calls = []

    def native_step(block, x, cache, pos, mask, rotary):
        y = fused_step(block, x, cache, pos, mask, rotary)
        calls.append(y is not None)
        return y if y is not None else by_modules(block, x, cache, pos, mask, rotary)

    with torch.no_grad():
        got, got_cache = run_steps(block, native_step, [1, 4, 5, 9, 1], padding, rope)
        want, want_cache = run_steps(block, by_modules, [1, 4, 5, 9, 1], padding, rope)
    assert calls == [True, True, True, False, True]  # 2 sequences × 9 tokens are more than the kernel takes
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cache.keys, want_cache.keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cache.values, want_cache.values, rtol=1e-5, atol=1e-5)


def one_step(block, x=None, mask=None, cache=None):
    x = torch.randn(1, 1, block.attn.out_proj.out_features) if x is None else x
    cache = cache or KVCache(1, block.attn.n_kv_heads, 8, block.attn.head_dim, dtype=x.dtype)
    return fused_step(block, x, cache, 0, mask)


@native
def test_steps_aside_where_the_modules_must_run(monkeypatch):
    block = random_block(config(**VARIANTS["gpt2-like"]))
    with torch.no_grad():
        assert one_step(block) is not None
        with int8_weights({block.attn.qkv: (torch.zeros(96, 32, dtype=torch.int8), torch.ones(96))}):
            assert one_step(block) is None  # a block only partly int8 runs as modules
        additive = build_attention_mask(1, 1, causal=True, position_bias=torch.zeros(1, 4, 1, 1))
        assert one_step(block, mask=additive) is None  # ALiBi / T5 biases
        assert one_step(block.double(), x=torch.randn(1, 1, 32, dtype=torch.float64)) is None
    x, cache = torch.randn(1, 1, 32), KVCache(1, 4, 8, 8)
    native = adopt(NativeBlock, block.float().eval())
    with torch.no_grad():
        torch.testing.assert_close(native(x, None, None, cache, 0), by_modules(block, x, KVCache(1, 4, 8, 8), 0, None),
                                   rtol=1e-5, atol=1e-5)
    calls = []
    original = native_block.decode_block
    monkeypatch.setattr(native_block, "decode_block", lambda *args: calls.append(1) or original(*args))
    native(x, None, None, KVCache(1, 4, 8, 8), 0)  # gradients wanted: the modules run
    with torch.no_grad():
        native.train()(x, None, None, KVCache(1, 4, 8, 8), 0)
    assert calls == []


def test_which_blocks_run_natively():
    assert runs_natively(random_block(config(**VARIANTS["llama-like"])))
    assert not runs_natively(random_block(config(ffn="selu")))
    assert not runs_natively(random_block(config(moe=MoEConfig(num_experts=2))))
    assert not runs_natively(random_block(config(norm_placement="post")))


@native
@pytest.mark.parametrize("variant", ["gpt2-like", "llama-like", "llama-rope"])
@pytest.mark.parametrize("settings", [
    dict(strategy="greedy", draft_tokens=0), dict(strategy="greedy"), dict(strategy="beam", num_beams=3),
    dict(strategy="sample", seed=3, top_k=20, draft_tokens=0),
], ids=["greedy", "greedy-speculative", "beam", "sample"])
def test_generation_is_the_same_with_and_without_the_native_block(variant, settings, monkeypatch):
    torch.manual_seed(0)
    model = build_model(config(**VARIANTS[variant], n_layer=3)).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    gen = GenerationConfig(max_new_tokens=12, **settings)
    with_block = [generate_batch(model, [p], gen) for p in prompts] + [generate_batch(model, prompts, gen)]
    monkeypatch.setattr(NativeBlock, "_native_step", lambda *args: None)
    without = [generate_batch(model, [p], gen) for p in prompts] + [generate_batch(model, prompts, gen)]
    for a, b in zip(with_block, without):
        assert a.sequences == b.sequences
        if a.scores is not None:  # beam search's sequence scores
            torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)


@native
@pytest.mark.parametrize("variant", ["gpt2-like", "llama-like"])
def test_int8_projections_of_a_draft_run_in_the_native_block(variant):
    block = random_block(config(**VARIANTS[variant]))
    with_native_layers = decoding_twin(block)  # its projections are native linear layers, which read int8 copies
    table = {m: quantize_weight(m.weight) for m in with_native_layers.modules() if isinstance(m, NativeLinear)}

    def native_step(block, x, cache, pos, mask, rotary):
        y = fused_step(block, x, cache, pos, mask, rotary)
        assert y is not None
        return y

    with torch.no_grad(), int8_weights(table):
        got, _ = run_steps(with_native_layers, native_step, [1, 4, 1])
        want, _ = run_steps(with_native_layers, by_modules, [1, 4, 1])
    # each projection rounds its input to int16, so a float32 rounding apart can move a value by
    # one step: the two agree to about 1e-4, where the int8 model is some 1e-2 from the float32 one
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        float32, _ = run_steps(block, by_modules, [1, 4, 1])
    assert (got - float32).abs().mean() > 10 * (got - want).abs().max()  # the int8 weights were used
    x, cache = torch.randn(2, 5, block.attn.out_proj.out_features), KVCache(2, block.attn.n_kv_heads, 8, block.attn.head_dim)
    with torch.no_grad():
        with int8_weights(table):  # 10 rows: more than the int8 kernel takes, where float32 weights take them
            assert fused_step(with_native_layers, x, cache, 0, None) is None
        assert fused_step(with_native_layers, x, cache, 0, None) is not None
