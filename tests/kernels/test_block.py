"""The native block's weight table: it refuses what it would misread (the modules' equality is in
tests/generation/fast/test_native_block.py)."""

import pytest
import torch

from lmlab.kernels import load_native, native_status
from lmlab.kernels.block import block_weights

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def tensors(C=8, F=16, H=2, H_kv=1, D=4):
    QKV = (H + 2 * H_kv) * D
    return {
        "norm1_w": torch.ones(C), "norm1_b": torch.zeros(C), "norm2_w": torch.ones(C), "norm2_b": None,
        "qkv_w": torch.randn(QKV, C), "qkv_b": torch.randn(QKV), "out_w": torch.randn(C, H * D), "out_b": None,
        "up_w": torch.randn(F, C), "up_b": None, "gate_w": torch.randn(F, C), "gate_b": None,
        "down_w": torch.randn(C, F), "down_b": torch.randn(C),
    }


def weights(**changes):
    settings = dict(heads=2, kv_heads=1, norm="rmsnorm", eps=1e-6, activation="silu", tensors=tensors())
    settings.update(changes)
    return block_weights(**settings)


@native
def test_a_well_formed_block_gets_its_shapes():
    got = weights()
    assert (got.C, got.H, got.Hkv, got.D, got.F, got.gated) == (8, 2, 1, 4, 16, 1)
    assert got.norm2_b is None and got.out_b is None  # absent biases are null pointers


@native
def test_refuses_what_the_kernel_would_misread():
    assert weights(activation="selu") is None
    assert weights(norm="batchnorm") is None
    bad = tensors()
    bad["down_w"] = torch.randn(8, 15)  # not (C, F)
    assert weights(tensors=bad) is None
    strided = tensors()
    strided["up_w"] = torch.randn(8, 16).t()  # (F, C) but column-major
    assert weights(tensors=strided) is None
    assert weights(tensors={k: (v.double() if v is not None else None) for k, v in tensors().items()}) is None
