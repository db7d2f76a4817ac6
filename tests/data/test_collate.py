"""Collators: padding sides, masks, truncation, classification and seq2seq batches."""

from __future__ import annotations

import pytest
import torch

from lmlab.data.collate import (
    collate_classification,
    collate_prompts,
    collate_seq2seq,
    pad_batch,
)
from lmlab.errors import LmlabError
from lmlab.objectives import IGNORE_INDEX

PAD, EOS, START = 0, 2, 1


def test_right_padding():
    batch = pad_batch([[5, 6, 7], torch.tensor([8]), []], PAD)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, PAD, PAD], [PAD, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert batch.input_ids.dtype == torch.int64 and batch.position_ids is None


def test_left_padding_and_truncation():
    batch = pad_batch([[5, 6, 7], [8]], PAD, side="left")
    assert batch.input_ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch.attention_mask.tolist() == [[True] * 3, [False, False, True]]
    assert pad_batch([[5, 6, 7], [8]], PAD, max_length=2).input_ids.tolist() == [[5, 6], [8, PAD]]
    left = pad_batch([[5, 6, 7], [8]], PAD, side="left", max_length=2)
    assert left.input_ids.tolist() == [[6, 7], [PAD, 8]]


def test_prompts_are_left_padded_with_positions():
    batch = collate_prompts([[5, 6, 7], [8, 9]], PAD)
    assert batch.input_ids.tolist() == [[5, 6, 7], [PAD, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 1]]


def test_classification_batch():
    batch = collate_classification([[5, 6], [7]], [1, 0], PAD)
    assert batch.input_ids.tolist() == [[5, 6], [7, PAD]]
    assert batch.labels.tolist() == [1, 0] and batch.labels.dtype == torch.int64
    with pytest.raises(LmlabError, match="2 sequences but 1 labels"):
        collate_classification([[5, 6], [7]], [1], PAD)


def test_seq2seq_batch_appends_eos_and_shifts_targets():
    batch = collate_seq2seq([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=PAD, decoder_start_id=START,
                            eos_id=EOS)
    assert batch.input_ids.tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert batch.attention_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.labels.tolist() == [[9, EOS, IGNORE_INDEX], [10, 11, EOS]]
    assert batch.decoder_input_ids.tolist() == [[START, 9, PAD], [START, 10, 11]]
    assert batch.decoder_attention_mask.tolist() == [[True, True, False], [True] * 3]


def test_seq2seq_truncation_keeps_room_for_eos():
    batch = collate_seq2seq([[5, 6, 7, 8]], [[9, 10, 11]], pad_id=PAD, decoder_start_id=START,
                            eos_id=EOS, max_source_length=3, max_target_length=2)
    assert batch.input_ids.tolist() == [[5, 6, EOS]]
    assert batch.labels.tolist() == [[9, EOS]]
    plain = collate_seq2seq([[5, 6, 7]], [[9, 10]], pad_id=PAD, decoder_start_id=START,
                            max_source_length=2)
    assert plain.input_ids.tolist() == [[5, 6]] and plain.labels.tolist() == [[9, 10]]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: pad_batch([], PAD), "empty batch"),
        (lambda: pad_batch([[1]], PAD, side="middle"), "side must be one of right, left"),
        (lambda: pad_batch([[[1, 2]]], PAD), "must be 1-D"),
        (lambda: pad_batch([[1]], PAD, max_length=0), "max_length must be at least 1"),
        (lambda: collate_seq2seq([[1]], [], pad_id=PAD, decoder_start_id=START), "1 sources but 0"),
        (lambda: collate_seq2seq([[1]], [[]], pad_id=PAD, decoder_start_id=START), "target .* empty"),
        (lambda: collate_seq2seq([[1]], [[2]], pad_id=PAD, decoder_start_id=START, eos_id=EOS,
                                 max_target_length=1), "no room"),
    ],
)
def test_errors(call, message):
    with pytest.raises(LmlabError, match=message):
        call()
