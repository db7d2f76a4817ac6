"""The native one-pass log-softmax top-k against float64 PyTorch, and where it declines."""

import pytest
import torch

from lmlab.kernels import load_native, log_softmax_topk, native_status

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


@native
@pytest.mark.parametrize("R, V, k", [(1, 1, 1), (3, 17, 5), (4, 50257, 8), (2, 100, 100), (5, 1000, 1)])
@pytest.mark.parametrize("with_offset", [True, False])
def test_matches_float64_top_k_of_log_softmax(R, V, k, with_offset):
    g = torch.Generator().manual_seed(R * V + k)
    logits = torch.randn(R, V, generator=g) * 4
    offset = torch.randn(R, generator=g) if with_offset else None
    values, indices = log_softmax_topk(logits, k, offset)
    want = logits.double().log_softmax(-1) + (offset.double()[:, None] if with_offset else 0)
    want_values, _ = torch.topk(want, k)
    torch.testing.assert_close(values.double(), want_values, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(want.gather(1, indices), want_values, rtol=1e-6, atol=1e-5)  # the right columns
    assert all(len(set(row)) == k for row in indices.tolist())  # k different columns per row


@native
def test_ties_go_to_the_lower_column_and_minus_infinity_is_never_preferred():
    logits = torch.tensor([[0.0, 2.0, float("-inf"), 2.0, 1.0, float("-inf")]])
    values, indices = log_softmax_topk(logits, 4)
    assert indices.tolist() == [[1, 3, 4, 0]]
    torch.testing.assert_close(values, logits.log_softmax(-1)[:, [1, 3, 4, 0]])


def test_declines_what_it_does_not_take():
    logits = torch.randn(2, 10)
    assert log_softmax_topk(logits.double(), 3) is None
    assert log_softmax_topk(logits, 11) is None
    assert log_softmax_topk(logits, 0) is None
    assert log_softmax_topk(logits, 3, torch.zeros(3)) is None
