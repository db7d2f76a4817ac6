"""Token windows for language-model training and evaluation."""

from __future__ import annotations

from typing import Iterator

import torch

from lmlab.errors import LmlabError


def token_tensor(ids: list[int]) -> torch.Tensor:
    """A compact 1-D tensor of a corpus's token ids (int32: half the memory of int64)."""
    return torch.tensor(ids, dtype=torch.int32)


def check_enough_tokens(tokens: torch.Tensor, window: int, what: str) -> None:
    """Fail clearly when a split is too short to cut one window of ``window`` + 1 tokens."""
    if tokens.numel() < window + 1:
        raise LmlabError(
            f"the {what} split has {tokens.numel()} tokens but one window needs {window + 1}; "
            "use more text or a smaller model.context_length"
        )


def random_windows(
    tokens: torch.Tensor, batch_size: int, window: int, generator: torch.Generator
) -> torch.Tensor:
    """``batch_size`` random windows of ``window`` + 1 consecutive tokens: (B, window+1) int64."""
    starts = torch.randint(tokens.numel() - window, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(window + 1)  # (window+1,)
    return tokens[starts[:, None] + offsets].long()


def sequential_windows(tokens: torch.Tensor, batch_size: int, window: int) -> Iterator[torch.Tensor]:
    """Non-overlapping windows covering the tokens once, in order: batches of (b, window+1).

    Consecutive windows share one token (the last label of a window is the first input of the
    next), so every token after the first is predicted exactly once; a shorter tail window is
    yielded alone.
    """
    n = tokens.numel()
    starts = list(range(0, n - 1, window))
    full = [s for s in starts if s + window + 1 <= n]
    for i in range(0, len(full), batch_size):
        chunk = torch.tensor(full[i : i + batch_size])  # (b,)
        yield tokens[chunk[:, None] + torch.arange(window + 1)].long()
    tail = [s for s in starts if s + window + 1 > n]
    if tail and n - tail[0] >= 2:
        yield tokens[tail[0] :].long()[None, :]
