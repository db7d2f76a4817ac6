"""Loss, perplexity and next-token accuracy of a language model over token windows."""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.objectives import causal_lm_batch


@torch.no_grad()
def evaluate_lm(model: nn.Module, windows: Iterable[torch.Tensor]) -> dict[str, float]:
    """Token-weighted mean loss, its perplexity, and top-1 accuracy over (b, T+1) windows.

    Returns ``{"loss", "perplexity", "accuracy", "tokens"}``.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for window in windows:
        batch = causal_lm_batch(window)
        logits = model(batch.input_ids)  # (b, T, V)
        flat_logits = logits.reshape(-1, logits.size(-1)).float()
        flat_labels = batch.labels.reshape(-1)
        total_loss += F.cross_entropy(flat_logits, flat_labels, reduction="sum").item()
        correct += (flat_logits.argmax(-1) == flat_labels).sum().item()
        count += flat_labels.numel()
    model.train(was_training)
    if count == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "accuracy": float("nan"), "tokens": 0}
    loss = total_loss / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count, "tokens": count}
