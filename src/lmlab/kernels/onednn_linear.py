"""The float32 linear layer through oneDNN, the CPU library PyTorch bundles: training steps, prefill.

PyTorch multiplies float32 matrices on the CPU with MKL, which on some CPUs takes a slower path
than the CPU offers (on AMD's, MKL keeps to AVX2). The oneDNN product that PyTorch ships for its
own compiler (``torch.ops.mkldnn._linear_pointwise``) uses AVX-512 where the CPU has it.
:class:`OneDnnLinear` computes ``x·Wᵀ + b`` and both products of its backward through it, in
float32 (results agree with MKL's to rounding: a different order of the same sums);
:func:`onednn_linear_mode` swaps it in for every ``F.linear`` (so every ``nn.Linear``) on float32
CPU tensors run inside the block (a training step); :func:`linear` is one such product (the
decoding twin's products of more rows than its native kernel takes: a prompt's prefill).

It is used where :func:`onednn_linear_available` says so: this PyTorch has the operator, the CPU
has AVX-512, and ``LMLAB_NATIVE_KERNELS=0`` is not set (the one switch for every swapped-in
kernel). The same inputs give the same bits on every call, so resumed training stays exact.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lmlab.kernels.build import DISABLE_ENV

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's x (M, K) · weight (N, K)ᵀ + bias (N) → (M, N); strided operands are read in place."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def _operator_works() -> bool:
    try:
        x, weight = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_onednn(x, weight), torch.full((2, 4), 3.0)))
    except (AttributeError, NotImplementedError, RuntimeError):
        return False


def onednn_operator_works() -> bool:
    """Whether this PyTorch's oneDNN linear exists and computes float32 here (checked once)."""
    return torch.backends.mkldnn.is_available() and _operator_works()


def onednn_linear_available() -> bool:
    """True where :func:`onednn_linear_mode` swaps the oneDNN product in (see the module docstring)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn_operator_works()


class OneDnnLinear(torch.autograd.Function):
    """``F.linear`` forward and backward through oneDNN: x (..., K), weight (N, K), bias (N) or None."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.size(-1))  # (M, K)
        return _onednn(rows, weight, bias).view(*x.shape[:-1], weight.size(0))  # (..., N)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.size(-1))  # (M, N)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad_rows, weight.t()).view(x.shape)  # (M, N)·(N, K) → (..., K)
        if ctx.needs_input_grad[1]:
            rows = x.reshape(-1, x.size(-1))  # (M, K)
            grad_weight = _onednn(grad_rows.t(), rows.t())  # (N, M)·(M, K) → (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)  # (N,)
        return grad_x, grad_weight, grad_bias


def _takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a linear call is one oneDNN computes here: plain float32 CPU tensors, no autocast."""
    operands = (x, weight) if bias is None else (x, weight, bias)
    return (
        all(type(t) in _PLAIN_TENSOR_TYPES and t.dtype == torch.float32 and t.device.type == "cpu" for t in operands)
        and x.dim() >= 1 and weight.dim() == 2 and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through :class:`OneDnnLinear` where
    :func:`onednn_linear_available` and the operands are float32 CPU tensors (the decoding twin's
    many-row products: a prompt's prefill)."""
    if onednn_linear_available() and _takes(x, weight, bias):
        return OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class _LinearThroughOneDnn(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_arguments(*args, **kwargs)
            if _takes(x, weight, bias):
                return OneDnnLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def _linear_arguments(input, weight, bias=None):
    return input, weight, bias


@contextlib.contextmanager
def onednn_linear_mode(enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``F.linear`` on float32 CPU tensors runs through :class:`OneDnnLinear`
    (when ``enabled`` and :func:`onednn_linear_available`); everything else runs as it would."""
    if not (enabled and onednn_linear_available()):
        yield
        return
    with _LinearThroughOneDnn():
        yield
