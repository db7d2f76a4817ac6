"""layers/dropout.py against nn.Dropout's definition: identity in eval, zero fraction p, kept
elements scaled by 1/(1-p), the gradient through the same mask, and seeded reproducibility; the
16-bit drop-mask's probability and uniformity."""

import pytest
import torch
from torch import nn

from lmlab.layers.dropout import MASK_LEVELS, Dropout, drop_mask


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
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), rtol=1e-5, atol=0.0)  # p to within 2⁻¹⁷
    reference = nn.Dropout(p).train()(x)  # the same expectation as PyTorch's own dropout
    assert abs(y.mean().item() - reference.mean().item()) < 0.01


def test_gradient_flows_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = Dropout(0.25).train()(x)
    y.backward(torch.ones_like(y))
    expected = (y.detach() != 0).to(x.dtype) / 0.75  # 0.25 is a multiple of 2⁻¹⁶: exact
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


@pytest.mark.parametrize("p", [0.1, 0.2, 1 / 3, 0.9])
def test_mask_probability_is_p_rounded_to_16_bits(p):
    torch.manual_seed(2)
    dropped, drawn_p = drop_mask(torch.Size([3, 501, 7]), p)  # not a multiple of four elements
    assert dropped.shape == (3, 501, 7) and dropped.dtype == torch.bool
    assert drawn_p == round(p * MASK_LEVELS) / MASK_LEVELS and abs(drawn_p - p) <= 2**-17
    share = dropped.double().mean().item()
    assert abs(share - drawn_p) < 4 * (drawn_p * (1 - drawn_p) / dropped.numel()) ** 0.5  # within 4 sigma


def test_mask_positions_are_independent_of_their_place_in_the_64_bit_draw():
    torch.manual_seed(3)
    dropped, _ = drop_mask(torch.Size([400_000]), 0.5)
    for lane in range(4):  # each 16-bit quarter of the draw drops half its elements
        assert abs(dropped[lane::4].double().mean().item() - 0.5) < 0.005
    pairs = (dropped[0::4] & dropped[1::4]).double().mean().item()
    assert abs(pairs - 0.25) < 0.005  # neighbours in one draw are not correlated
