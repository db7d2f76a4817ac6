"""Prefix language modelling: a bidirectional prefix, then causal prediction of the rest.

Each window of T+1 tokens is split at a random prefix length P (drawn per example). The model
reads the first T tokens, attending bidirectionally inside ``input_ids[:, :P]`` and causally
after it, and is trained only on the tokens after the prefix: position t predicts token t+1, and
the loss is taken where that token lies outside the prefix (t >= P-1).
"""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, LMBatch


def prefix_lm_batch(
    windows: torch.Tensor,
    generator: torch.Generator,
    *,
    min_prefix: int = 1,
    max_prefix: int | None = None,
) -> LMBatch:
    """Turn token windows of length T+1 into a prefix-LM batch.

    windows: (B, T+1) LongTensor. The prefix length of each example is uniform in
    ``[min_prefix, max_prefix]`` (default ``[1, T-1]``), drawn with ``generator``.
    Returns input_ids (B, T), labels (B, T) with IGNORE_INDEX inside the prefix, and
    prefix_lengths (B,).
    """
    if windows.dim() != 2 or windows.size(0) == 0:
        raise LmlabError("prefix LM needs a non-empty (B, T+1) tensor of token windows")
    seq_len = windows.size(1) - 1
    high = seq_len - 1 if max_prefix is None else max_prefix
    if seq_len < 2:
        raise LmlabError(f"prefix LM needs windows of at least 3 tokens, got {seq_len + 1}")
    if not 1 <= min_prefix <= high <= seq_len - 1:
        raise LmlabError(
            f"prefix length range [{min_prefix}, {high}] must lie within [1, {seq_len - 1}]"
        )
    batch_size = windows.size(0)
    prefix_lengths = torch.randint(
        min_prefix, high + 1, (batch_size,), generator=generator, device=windows.device
    )  # (B,)
    positions = torch.arange(seq_len, device=windows.device)  # (T,)
    in_prefix = positions[None, :] < (prefix_lengths[:, None] - 1)  # (B, T) label is a prefix token
    labels = windows[:, 1:].masked_fill(in_prefix, IGNORE_INDEX)  # (B, T)
    return LMBatch(input_ids=windows[:, :-1], labels=labels, prefix_lengths=prefix_lengths)
