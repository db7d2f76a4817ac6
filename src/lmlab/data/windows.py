"""Token windows for language-model training and evaluation."""

from __future__ import annotations

from typing import Iterator

import torch

from lmlab.errors import LmlabError


def token_tensor(ids: list[int]) -> torch.Tensor:
    """A compact 1-D tensor of a corpus's token ids (int32: half the memory of int64)."""
    return torch.tensor(ids, dtype=torch.int32)


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


class TokenSpan:
    """Tokens ``[start, stop)`` of a token store, cut into training and evaluation windows.

    The store is a 1-D tensor (a corpus tokenised in memory) or anything with ``len()`` and
    ``window(start, length)``, such as memory-mapped :class:`~lmlab.data.shards.ShardedTokens`;
    so a split of a corpus larger than RAM is a span of its shards.
    """

    def __init__(self, store, start: int = 0, stop: int | None = None, name: str = "training"):
        self.store = store
        self.start = start
        self.stop = len(store) if stop is None else stop
        self.name = name

    def __len__(self) -> int:
        return self.stop - self.start

    def check_window(self, length: int) -> None:
        """Fail clearly when the span cannot hold one window of ``length`` + 1 tokens."""
        if len(self) < length + 1:
            raise LmlabError(
                f"the {self.name} split has {len(self)} tokens but one window needs {length + 1}; "
                "use more text or a smaller model.context_length"
            )

    def random_windows(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` random windows of ``length`` + 1 tokens: (B, length+1) int64."""
        starts = torch.randint(len(self) - length, (batch_size,), generator=generator) + self.start  # (B,)
        return self._gather(starts, length + 1)

    def sequential_windows(self, batch_size: int, length: int) -> Iterator[torch.Tensor]:
        """Windows covering the span once, in order (see :func:`sequential_windows`)."""
        if torch.is_tensor(self.store):
            return sequential_windows(self.store[self.start : self.stop], batch_size, length)
        return self._sequential_from_store(batch_size, length)

    def _sequential_from_store(self, batch_size: int, length: int) -> Iterator[torch.Tensor]:
        starts = list(range(self.start, self.stop - 1, length))
        full = [s for s in starts if s + length + 1 <= self.stop]
        for i in range(0, len(full), batch_size):
            yield self._gather(torch.tensor(full[i : i + batch_size]), length + 1)  # (b, length+1)
        tail = [s for s in starts if s + length + 1 > self.stop]
        if tail and self.stop - tail[0] >= 2:
            yield self.store.window(tail[0], self.stop - tail[0])[None, :]

    def _gather(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        if torch.is_tensor(self.store):
            return self.store[starts[:, None] + torch.arange(length)].long()  # (B, length)
        return torch.stack([self.store.window(int(s), length) for s in starts])  # (B, length)


def split_span(store, val_fraction: float) -> tuple[TokenSpan, TokenSpan]:
    """The first (1 - val_fraction) of a token store for training, the rest for validation."""
    n_val = round(len(store) * val_fraction)
    return TokenSpan(store, 0, len(store) - n_val, "training"), TokenSpan(store, len(store) - n_val, None, "validation")
