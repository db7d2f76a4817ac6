"""Logits processors: small functions that reshape next-token scores before a choice is made."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide scores by ``temperature`` (< 1 sharpens, > 1 flattens). logits: (B, V)."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest scores per row; the rest become -inf. logits: (B, V)."""
    k = min(k, logits.size(-1))
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_best, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose probability reaches ``p``.

    Like the reference implementation, tokens are sorted ascending and those whose cumulative
    probability stays within ``1 - p`` are removed; the most likely token is always kept.
    logits: (B, V).
    """
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def check_sampling_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject settings under which sampling is impossible, with one clear line each."""
    if not temperature > 0:
        raise LmlabError(f"temperature must be > 0 for sampling, got {temperature}; use --strategy greedy for argmax decoding")
    if top_k is not None and top_k < 1:
        raise LmlabError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmlabError(f"top-p must be in (0, 1], got {top_p}")
