"""Token windows: random ones are reproducible contiguous slices; sequential ones label each token once."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.windows import TokenSpan, random_windows, sequential_windows, split_span, token_tensor
from lmlab.errors import LmlabError


def test_token_tensor_is_compact():
    tokens = token_tensor([3, 1, 4, 1, 5])
    assert tokens.dtype == torch.int32
    assert tokens.tolist() == [3, 1, 4, 1, 5]


def test_random_windows_are_deterministic_per_generator():
    tokens = token_tensor(list(range(1000)))
    a = random_windows(tokens, 8, 16, torch.Generator().manual_seed(7))
    b = random_windows(tokens, 8, 16, torch.Generator().manual_seed(7))
    c = random_windows(tokens, 8, 16, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (8, 17) and a.dtype == torch.int64


def test_random_windows_do_not_touch_the_global_rng():
    tokens = token_tensor(list(range(100)))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    random_windows(tokens, 4, 8, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 300), batch=st.integers(1, 8), seed=st.integers(0, 2**31), data=st.data())
def test_random_windows_are_contiguous_slices(n, batch, seed, data):
    window = data.draw(st.integers(1, n - 1))
    values = torch.randperm(10_000, generator=torch.Generator().manual_seed(seed))[:n].to(torch.int32)
    position = {int(v): i for i, v in enumerate(values)}
    windows = random_windows(values, batch, window, torch.Generator().manual_seed(seed))
    assert windows.shape == (batch, window + 1)
    for row in windows.tolist():
        start = position[row[0]]
        assert start + window < n
        assert row == values[start : start + window + 1].tolist()


def test_random_windows_reach_both_ends():
    tokens = token_tensor(list(range(12)))
    windows = random_windows(tokens, 2000, 4, torch.Generator().manual_seed(0))
    starts = set(windows[:, 0].tolist())
    assert starts == set(range(12 - 4))  # every start from 0 to n - window - 1



def test_random_windows_need_one_window_of_tokens():
    with pytest.raises(LmlabError, match="8 tokens but one window needs 9"):
        random_windows(token_tensor(list(range(8))), 2, 8, torch.Generator())

@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 200), batch=st.integers(1, 6), window=st.integers(1, 40))
def test_sequential_windows_label_every_token_exactly_once(n, batch, window):
    tokens = token_tensor(list(range(n)))
    labels, inputs = [], []
    for chunk in sequential_windows(tokens, batch, window):
        assert chunk.dtype == torch.int64
        assert 1 <= chunk.size(0) <= batch
        assert 2 <= chunk.size(1) <= window + 1
        for row in chunk.tolist():
            assert row == list(range(row[0], row[0] + len(row)))  # contiguous
            inputs.extend(row[:-1])
            labels.extend(row[1:])
    assert sorted(labels) == list(range(1, n))  # each token after the first, once
    assert sorted(inputs) == list(range(0, max(n - 1, 0)))


def test_sequential_windows_are_in_order_and_full_first():
    tokens = token_tensor(list(range(23)))
    chunks = list(sequential_windows(tokens, 2, 5))
    assert [c.shape for c in chunks] == [(2, 6), (2, 6), (1, 3)]
    assert chunks[0][:, 0].tolist() == [0, 5]
    assert chunks[1][:, 0].tolist() == [10, 15]
    assert chunks[2].tolist() == [[20, 21, 22]]


def test_a_span_too_short_for_one_window_is_a_clear_error():
    TokenSpan(token_tensor(list(range(9)))).check_window(8)  # exactly one window fits
    with pytest.raises(LmlabError, match="validation split has 8 tokens"):
        TokenSpan(token_tensor(list(range(8))), name="validation").check_window(8)


class _Store:
    """A token store that is not a tensor (like memory-mapped shards)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return self.tokens.numel()

    def window(self, start, length):
        return self.tokens[start : start + length].long()


def test_spans_of_a_store_give_the_same_windows_as_spans_of_a_tensor():
    tokens = token_tensor(list(range(100)))
    for store in (tokens, _Store(tokens)):
        train, val = split_span(store, 0.2)
        assert (len(train), len(val)) == (80, 20)
        got = val.random_windows(4, 5, torch.Generator().manual_seed(3))
        assert got.min() >= 80 and torch.equal(got[:, 1:] - got[:, :-1], torch.ones(4, 5, dtype=torch.long))
        rows = torch.cat([w[:, 1:].reshape(-1) for w in val.sequential_windows(2, 6)])
        assert torch.equal(rows, torch.arange(81, 100))  # every token after the first is a label once
