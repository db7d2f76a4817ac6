"""layers/dropout.py against nn.Dropout's definition: identity in eval, zero fraction p, kept
elements scaled by 1/(1-p), the gradient through the same mask, and seeded reproducibility."""

import pytest
import torch
from torch import nn

from lmlab.layers.dropout import Dropout


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 8)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_a_share_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    x = torch.rand(200_000, dtype=torch.float64) + 1.0  # no element is zero before dropout
    y = Dropout(p).train()(x)
    dropped = y == 0
    assert abs(dropped.double().mean().item() - p) < 0.01
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
    reference = nn.Dropout(p).train()(x)  # the same expectation as PyTorch's own dropout
    assert abs(y.mean().item() - reference.mean().item()) < 0.01


def test_gradient_flows_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = Dropout(0.25).train()(x)
    y.backward(torch.ones_like(y))
    expected = (y.detach() != 0).to(x.dtype) / 0.75
    torch.testing.assert_close(x.grad, expected)


def test_same_seed_same_mask():
    x = torch.randn(16, 16)
    torch.manual_seed(7)
    first = Dropout(0.5).train()(x)
    torch.manual_seed(7)
    assert torch.equal(first, Dropout(0.5).train()(x))


def test_probability_outside_range_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
