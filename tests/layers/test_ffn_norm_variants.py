"""Feed-forward variants, norms and norm placement against float64 references written here."""

import math

import pytest
import torch

from lmlab.layers.feedforward import FFN_KINDS, GatedFeedForward, build_feedforward
from lmlab.layers.norms import NORMS, PLACEMENTS, build_norm, post_norm, pre_norm

ACTIVATION_REFERENCES = {
    "relu": lambda x: x.clamp(min=0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu-tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "selu": lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}
GLU_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu", "geglu-tanh": "gelu-tanh", "reglu": "relu"}


def linear64(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    out = x.double() @ layer.weight.double().T
    return out + layer.bias.double() if layer.bias is not None else out


@pytest.mark.parametrize("kind", FFN_KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_feedforward_matches_float64_reference(kind, bias):
    torch.manual_seed(0)
    ffn = build_feedforward(kind, 8, 12, bias=bias)
    x = torch.randn(2, 5, 8) * 2
    if kind in GLU_ACTIVATIONS:  # Shazeer (2020): (act(xW) ⊙ xV) W2
        assert isinstance(ffn, GatedFeedForward)
        act = ACTIVATION_REFERENCES[GLU_ACTIVATIONS[kind]]
        want = linear64(ffn.down, act(linear64(ffn.gate, x)) * linear64(ffn.up, x))
    else:
        want = linear64(ffn.down, ACTIVATION_REFERENCES[kind](linear64(ffn.up, x)))
    torch.testing.assert_close(ffn(x).double(), want, atol=1e-5, rtol=1e-5)


def test_feedforward_width_is_configurable_and_unknown_kinds_list_the_valid_ones():
    assert build_feedforward("swiglu", 8, 20).gate.out_features == 20
    with pytest.raises(ValueError, match="swiglu"):
        build_feedforward("tanh", 8, 8)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_reference_with_and_without_bias(bias):
    torch.manual_seed(0)
    norm = build_norm("layernorm", 8, bias=bias)
    torch.nn.init.normal_(norm.weight)
    if bias:
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 8) * 3 + 1
    x64 = x.double()
    want = (x64 - x64.mean(-1, keepdim=True)) / torch.sqrt(x64.var(-1, unbiased=False, keepdim=True) + 1e-5)
    want = want * norm.weight.double() + (norm.bias.double() if bias else 0)
    assert (norm.bias is not None) == bias
    torch.testing.assert_close(norm(x).double(), want, atol=1e-5, rtol=1e-5)


def test_rmsnorm_matches_reference_and_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = build_norm("rmsnorm", 8)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(3, 4, 8) * 3 + 1
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), want, atol=1e-5, rtol=1e-5)
    llama = LlamaRMSNorm(8, eps=1e-5)
    llama.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), llama(x))


def test_unknown_norm_lists_the_valid_ones():
    with pytest.raises(ValueError, match=", ".join(NORMS)):
        build_norm("batchnorm", 4)


def test_pre_and_post_placement():
    norm = torch.nn.LayerNorm(4)
    x = torch.randn(2, 4)
    double = lambda h: 2 * h  # noqa: E731
    torch.testing.assert_close(pre_norm(x, norm, double), x + 2 * norm(x))
    torch.testing.assert_close(post_norm(x, norm, double), norm(3 * x))
    assert PLACEMENTS["pre"].norm_output and not PLACEMENTS["pre"].norm_embeddings
    assert PLACEMENTS["post"].norm_embeddings and not PLACEMENTS["post"].norm_output
