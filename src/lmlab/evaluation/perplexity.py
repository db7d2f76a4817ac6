"""Loss, perplexity and accuracy of a model on the labels of any objective's batches."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmlab.objectives import IGNORE_INDEX, LMBatch, causal_lm_batch

PROGRESS_DELAY_S = 2.0  # an evaluation shorter than this shows no progress bar
Forward = Callable[[nn.Module, LMBatch], torch.Tensor]  # (model, batch) → logits aligned with labels


def decoder_forward(model: nn.Module, batch: LMBatch) -> torch.Tensor:
    """Logits of a decoder-only model (B, T, V)."""
    return model(batch.input_ids)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Iterable[LMBatch], forward: Forward = decoder_forward,
                     progress: bool = False, total: int | None = None) -> dict[str, float]:
    """Token-weighted mean loss over labelled positions, its perplexity, and top-1 accuracy.

    Returns ``{"loss", "perplexity", "accuracy", "tokens"}``; positions labelled IGNORE_INDEX
    do not count. With ``progress``, a bar over the ``total`` batches appears on stderr once the
    evaluation has taken ``PROGRESS_DELAY_S`` seconds.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    bar = tqdm(batches, total=total, disable=not progress, delay=PROGRESS_DELAY_S, desc="eval", unit="batch", leave=False)
    for batch in bar:
        logits = forward(model, batch)  # (B, T, V)
        flat_logits = logits.reshape(-1, logits.size(-1)).float()
        flat_labels = batch.labels.reshape(-1)
        keep = flat_labels != IGNORE_INDEX
        total_loss += F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
        correct += (flat_logits.argmax(-1)[keep] == flat_labels[keep]).sum().item()
        count += int(keep.sum())
    model.train(was_training)
    if count == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "accuracy": float("nan"), "tokens": 0}
    loss = total_loss / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count, "tokens": count}


def evaluate_lm(model: nn.Module, windows: Iterable[torch.Tensor]) -> dict[str, float]:
    """Next-token metrics of a decoder-only model over (b, T+1) token windows."""
    return evaluate_batches(model, (causal_lm_batch(window) for window in windows))
