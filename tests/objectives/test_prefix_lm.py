"""Prefix LM: labels are next tokens, ignored inside the prefix; prefix lengths are uniform."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, token_cross_entropy
from lmlab.objectives.prefix_lm import prefix_lm_batch


def windows(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=50, deadline=None)
@given(
    batch=st.integers(1, 8),
    length=st.integers(2, 40),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_labels_ignore_exactly_the_prefix(batch, length, seed, data):
    low = data.draw(st.integers(1, length - 1))
    high = data.draw(st.integers(low, length - 1))
    ids = windows(batch, length, seed)
    result = prefix_lm_batch(
        ids, torch.Generator().manual_seed(seed), min_prefix=low, max_prefix=high
    )
    assert torch.equal(result.input_ids, ids[:, :-1])
    assert result.prefix_lengths.shape == (batch,)
    for row, prefix in enumerate(result.prefix_lengths.tolist()):
        assert low <= prefix <= high
        labels = result.labels[row].tolist()
        assert labels[: prefix - 1] == [IGNORE_INDEX] * (prefix - 1)
        assert labels[prefix - 1 :] == ids[row, prefix:].tolist()


def test_default_prefix_lengths_are_uniform_over_1_to_t_minus_1():
    length, batch = 9, 8000
    result = prefix_lm_batch(windows(batch, length), torch.Generator().manual_seed(1))
    counts = torch.bincount(result.prefix_lengths, minlength=length).tolist()
    assert counts[0] == 0 and len(counts) == length
    expected = batch / (length - 1)
    chi_square = sum((c - expected) ** 2 / expected for c in counts[1:])
    assert chi_square < 24.32  # chi-square, 7 degrees of freedom, p = 0.001


def test_deterministic_per_seed():
    ids = windows(64, 30)
    first = prefix_lm_batch(ids, torch.Generator().manual_seed(3))
    again = prefix_lm_batch(ids, torch.Generator().manual_seed(3))
    other = prefix_lm_batch(ids, torch.Generator().manual_seed(4))
    assert torch.equal(first.labels, again.labels)
    assert torch.equal(first.prefix_lengths, again.prefix_lengths)
    assert not torch.equal(first.prefix_lengths, other.prefix_lengths)


def test_loss_equals_cross_entropy_after_the_prefix():
    batch = prefix_lm_batch(windows(4, 16), torch.Generator().manual_seed(0))
    logits = torch.randn(4, 16, 100, generator=torch.Generator().manual_seed(0))
    keep = batch.labels != IGNORE_INDEX
    loss = token_cross_entropy(logits, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], batch.labels[keep]))


@pytest.mark.parametrize(
    "ids, kwargs",
    [
        (torch.zeros(0, 10, dtype=torch.long), {}),
        (torch.zeros(10, dtype=torch.long), {}),
        (torch.zeros(2, 2, dtype=torch.long), {}),
        (torch.zeros(2, 10, dtype=torch.long), {"min_prefix": 0}),
        (torch.zeros(2, 10, dtype=torch.long), {"max_prefix": 9}),
        (torch.zeros(2, 10, dtype=torch.long), {"min_prefix": 5, "max_prefix": 4}),
    ],
)
def test_bad_arguments_raise(ids, kwargs):
    with pytest.raises(LmlabError):
        prefix_lm_batch(ids, torch.Generator(), **kwargs)
