"""Document-aware packing: rows, segment ids, remainder handling, masks and positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.data.packing import (
    PAD_SEGMENT,
    document_attention_mask,
    iter_packed_rows,
    pack_documents,
    segment_positions,
)
from lmlab.errors import LmlabError

EOS, PAD = 0, 99


def test_documents_are_packed_with_eos_and_segment_ids():
    packed = pack_documents([[1, 2], [3], [4, 5, 6, 7, 8], [9]], row_length=4, eos_id=EOS, pad_id=PAD)
    assert packed.input_ids.tolist() == [
        [1, 2, EOS, 3],
        [EOS, 4, 5, 6],
        [7, 8, EOS, 9],
        [EOS, PAD, PAD, PAD],
    ]
    assert packed.segment_ids.tolist() == [
        [0, 0, 0, 1],
        [0, 1, 1, 1],
        [0, 0, 0, 1],
        [0, -1, -1, -1],
    ]


def test_partial_last_row_is_dropped_without_pad_id():
    packed = pack_documents([[1, 2], [3], [4, 5, 6, 7, 8]], row_length=4, eos_id=EOS)
    assert packed.input_ids.tolist() == [[1, 2, EOS, 3], [EOS, 4, 5, 6]]
    assert packed.input_ids.dtype == torch.int64 and packed.segment_ids.dtype == torch.int64


def test_tensors_and_generators_are_accepted_and_rows_stream():
    docs = (torch.tensor([i] * i) for i in range(1, 6))
    rows = iter_packed_rows(docs, row_length=5, eos_id=EOS)
    first_ids, first_segments = next(rows)
    assert first_ids.tolist() == [1, EOS, 2, 2, EOS]
    assert first_segments.tolist() == [0, 0, 1, 1, 1]
    assert len(list(rows)) == 3  # 20 tokens in rows of 5


def test_errors():
    with pytest.raises(LmlabError, match="row_length must be a positive integer"):
        pack_documents([[1]], row_length=0, eos_id=EOS)
    with pytest.raises(LmlabError, match="fill no row of 8 tokens"):
        pack_documents([[1, 2]], row_length=8, eos_id=EOS)


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(1, 50), max_size=12), min_size=1, max_size=10),
    row_length=st.integers(1, 9),
)
def test_rows_are_the_eos_joined_stream_and_segments_follow_eos(docs, row_length):
    stream = [token for doc in docs for token in doc + [EOS]]
    rows = list(iter_packed_rows(docs, row_length, EOS, pad_id=PAD))
    assert len(rows) == -(-len(stream) // row_length)
    flat = torch.cat([ids for ids, _ in rows]).tolist()
    assert flat[: len(stream)] == stream and set(flat[len(stream):]) <= {PAD}
    for ids, segments in rows:
        real = segments != PAD_SEGMENT
        assert segments[0] == 0
        steps = segments[real][1:] - segments[real][:-1]  # +1 exactly after each EOS
        after_eos = ids[real][:-1] == EOS
        assert torch.equal(steps, after_eos.long())


def test_document_attention_mask():
    segments = torch.tensor([[0, 0, 1, -1]])
    mask = document_attention_mask(segments)
    assert mask.shape == (1, 4, 4)
    assert mask[0].tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, False],
    ]


def test_segment_positions_restart_per_document():
    segments = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, -1, -1]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 0, 0]]
