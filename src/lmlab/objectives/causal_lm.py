"""Causal language modelling: predict each next token from the ones before it."""

from __future__ import annotations

import torch

from lmlab.objectives.base import LMBatch


def causal_lm_batch(windows: torch.Tensor) -> LMBatch:
    """Turn token windows of length T+1 into inputs (first T) and next-token labels (last T).

    windows: (B, T+1) → input_ids (B, T), labels (B, T).
    """
    return LMBatch(input_ids=windows[:, :-1], labels=windows[:, 1:])
