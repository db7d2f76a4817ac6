"""The native modules against the plain ones they take the place of, and the decoding twin."""

import copy
import pickle

import pytest
import torch
from torch import nn

from lmlab.generation import GenerationConfig, generate_batch
from lmlab.generation.fast import fast_path
from lmlab.generation.fast.block import NativeBlock
from lmlab.generation.fast.modules import NativeLinear, NativeSelfAttention, adopt
from lmlab.kernels import load_native, native_status, onednn_linear
from lmlab.layers.attention import MultiHeadAttention, capture_attention
from lmlab.layers.kv_cache import KVCache
from lmlab.models import ModelConfig, build_model

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def tiny(**overrides):
    torch.manual_seed(0)
    base = dict(vocab_size=50, n_layer=2, n_head=4, d_model=32, context_length=24, dropout=0.0)
    return build_model(ModelConfig(**{**base, **overrides})).eval()


def test_native_linear_equals_nn_linear_and_shares_its_parameters():
    torch.manual_seed(0)
    plain = nn.Linear(24, 10)
    layer = adopt(NativeLinear, plain)
    assert layer.weight is plain.weight and list(layer.state_dict()) == ["weight", "bias"]
    for shape in [(1, 24), (3, 1, 24), (20, 24)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 24, requires_grad=True)
    layer(x).sum().backward()
    assert plain.weight.grad is not None and x.grad is not None


@pytest.mark.skipif(not onednn_linear.onednn_operator_works(), reason="this PyTorch has no oneDNN linear operator")
def test_native_linear_computes_more_rows_than_the_kernel_takes_through_onednn(monkeypatch):
    monkeypatch.setattr(onednn_linear, "onednn_linear_available", lambda: True)
    products = []
    real = onednn_linear._onednn
    monkeypatch.setattr(onednn_linear, "_onednn", lambda *args: products.append(args[0].shape) or real(*args))
    torch.manual_seed(0)
    plain = nn.Linear(24, 10)
    layer = adopt(NativeLinear, plain)
    x = torch.randn(1, 20, 24)  # a 20-token prompt
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-6)
    assert products == [(20, 24)]


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_native_self_attention_equals_the_plain_cache_step(n_kv_heads):
    torch.manual_seed(0)
    plain = MultiHeadAttention(32, 4, n_kv_heads, dropout=0.0).eval()
    fast = adopt(NativeSelfAttention, plain)
    x = torch.randn(2, 11, 32)
    outputs = {}
    for name, module in (("plain", plain), ("native", fast)):
        cache, pos, out = KVCache(2, plain.n_kv_heads, 16, plain.head_dim), 0, []
        with torch.no_grad():
            for size in [3, 1, 7]:
                out.append(module(x[:, pos : pos + size], cache, pos))
                pos += size
        outputs[name] = (torch.cat(out, 1), cache.keys.clone())
    torch.testing.assert_close(outputs["native"][0], outputs["plain"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["native"][1], outputs["plain"][1], rtol=1e-6, atol=1e-6)


@native
def test_the_twin_swaps_native_modules_in_and_leaves_the_model_plain():
    model = tiny()
    path = fast_path(model)
    twin = path.twin
    assert isinstance(twin.backbone.blocks[0], NativeBlock)
    assert isinstance(twin.backbone.blocks[0].attn, NativeSelfAttention)
    assert isinstance(twin.lm_head, NativeLinear)
    assert not any(isinstance(m, (NativeBlock, NativeSelfAttention, NativeLinear)) for m in model.modules())
    assert all(a is b for a, b in zip(model.parameters(), twin.parameters()))  # the same tensors
    assert twin.lm_head.weight is twin.backbone.tok_emb.weight  # ties survive
    assert fast_path(model) is path  # kept while the parameters stay
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    assert fast_path(model) is not path  # made again when one is replaced


@native
def test_models_with_hooks_capture_or_in_training_keep_their_plain_modules():
    model = tiny()
    handle = model.backbone.blocks[1].ffn.down.register_forward_hook(lambda module, args, output: None)
    assert fast_path(model) is None
    handle.remove()
    with capture_attention(model):
        assert fast_path(model) is None
    assert fast_path(model.train()) is None
    assert fast_path(model.eval()) is not None


@native
def test_a_hooked_model_decodes_the_same_tokens_through_its_own_modules():
    model = tiny()
    want = generate_batch(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=8)).sequences
    calls = []
    handle = model.backbone.blocks[0].register_forward_hook(lambda module, args, output: calls.append(1))
    assert generate_batch(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=8)).sequences == want
    handle.remove()
    assert len(calls) == 8  # the prefill and seven steps, each through the hooked module


@native
def test_a_model_that_decoded_natively_still_copies_and_pickles():
    model = tiny(position="rope", norm="rmsnorm", ffn="swiglu", bias=False)
    generate_batch(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=3, draft_tokens=0))
    twin = copy.deepcopy(model)
    pickle.dumps(model)
    assert generate_batch(twin, [[1, 2, 3]], GenerationConfig(max_new_tokens=3)).sequences == \
        generate_batch(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=3)).sequences
