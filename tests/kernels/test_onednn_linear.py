"""The oneDNN float32 linear layer against a float64 reference, and when the mode swaps it in.

The products run wherever this PyTorch has the operator (any x86 CPU); only whether the mode turns
itself on by default depends on the CPU (AVX-512), so these tests force it on where needed.
"""

import pytest
import torch
import torch.nn.functional as F

from lmlab.kernels import onednn_linear
from lmlab.kernels.onednn_linear import OneDnnLinear, onednn_linear_available, onednn_linear_mode, onednn_operator_works

pytestmark = pytest.mark.skipif(not onednn_operator_works(), reason="this PyTorch has no oneDNN linear operator")


@pytest.fixture
def forced_on(monkeypatch):
    """The mode on whatever the CPU (the operator itself runs on every x86 CPU)."""
    monkeypatch.setattr(onednn_linear, "onednn_linear_available", lambda: True)


def operands(shape, d_in, d_out, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, d_in, generator=generator)
    weight = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
    b = torch.randn(d_out, generator=generator) if bias else None
    return x, weight, b


def float64_reference(x, weight, bias, grad):
    """Output and gradients of F.linear in float64."""
    leaves = [t.double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = F.linear(*leaves)
    out.backward(grad.double())
    return out, [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("shape, bias", [((12, 64), True), ((7,), False), ((3, 5, 9), True), ((1,), True)])
def test_forward_and_gradients_match_float64(shape, bias):
    x, weight, b = operands(shape, 96, 160, bias)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, b)]
    out = OneDnnLinear.apply(*leaves)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected, expected_grads = float64_reference(x, weight, b, grad)
    assert out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for leaf, want in zip(leaves, expected_grads):
        if leaf is not None:
            torch.testing.assert_close(leaf.grad.double(), want, rtol=1e-5, atol=1e-4)


def test_only_the_gradients_asked_for_are_computed():
    x, weight, _ = operands((4, 8), 16, 24, bias=False)
    weight.requires_grad_()
    OneDnnLinear.apply(x, weight, None).sum().backward()
    assert x.grad is None and weight.grad is not None


def test_the_same_inputs_give_the_same_bits_and_an_updated_weight_is_read_afresh():
    x, weight, b = operands((48,), 128, 384)
    first = OneDnnLinear.apply(x, weight, b)
    assert all(torch.equal(OneDnnLinear.apply(x, weight, b), first) for _ in range(5))
    with torch.no_grad():
        weight.mul_(2.0)
    torch.testing.assert_close(OneDnnLinear.apply(x, weight, b), F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_the_mode_routes_nn_linear_through_onednn_with_the_same_training_step(forced_on):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    x = torch.randn(5, 11, 32)

    def gradients(mode: bool):
        model.zero_grad()
        with onednn_linear_mode(mode):
            out = model(x)
            out.square().mean().backward()
        return out, [p.grad.clone() for p in model.parameters()]

    plain_out, plain_grads = gradients(False)
    fast_out, fast_grads = gradients(True)
    assert "OneDnnLinear" in fast_out.grad_fn.name() and "OneDnnLinear" not in plain_out.grad_fn.name()
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-5, atol=1e-6)
    for fast, plain in zip(fast_grads, plain_grads):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["float64", "autocast", "disabled"])
def test_the_mode_leaves_what_it_does_not_take_to_pytorch(forced_on, case):
    x, weight, b = operands((6,), 16, 8)
    if case == "float64":
        x, weight, b = x.double(), weight.double(), b.double()
    with onednn_linear_mode(enabled=case != "disabled"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        out = F.linear(x.requires_grad_(), weight, b)
    assert "OneDnnLinear" not in out.grad_fn.name()
    assert out.dtype == (torch.bfloat16 if case == "autocast" else x.dtype)


def test_the_native_kernels_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("LMLAB_NATIVE_KERNELS", "0")
    assert not onednn_linear_available()
    x, weight, b = operands((6,), 16, 8)
    with onednn_linear_mode():
        out = F.linear(x.requires_grad_(), weight, b)
    assert "OneDnnLinear" not in out.grad_fn.name()
