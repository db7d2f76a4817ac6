"""Token windows for language-model training and evaluation."""

from __future__ import annotations

from typing import Iterator

import torch

from lmlab.errors import LmlabError


def token_tensor(ids: list[int]) -> torch.Tensor:
    """A compact 1-D tensor of a corpus's token ids (int32: half the memory of int64)."""
    return torch.tensor(ids, dtype=torch.int32)


def random_windows(tokens, batch_size: int, window: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` random windows of ``window`` + 1 consecutive tokens: (B, window+1) int64.

    ``tokens`` is a 1-D tensor or a token store: anything with ``len()`` and
    ``window(start, length)``, such as memory-mapped :class:`~lmlab.data.shards.ShardedTokens`.
    """
    if len(tokens) < window + 1:
        raise LmlabError(
            f"there are {len(tokens)} tokens but one window needs {window + 1}; "
            "use more text or a shorter window"
        )
    starts = torch.randint(len(tokens) - window, (batch_size,), generator=generator)  # (B,)
    return _gather(tokens, starts, window + 1)


def sequential_windows(tokens, batch_size: int, window: int) -> Iterator[torch.Tensor]:
    """Non-overlapping windows covering the tokens once, in order: batches of (b, window+1).

    Consecutive windows share one token (the last label of a window is the first input of the
    next), so every token after the first is predicted exactly once; a shorter tail window is
    yielded alone. ``tokens`` is a 1-D tensor or a token store (see :func:`random_windows`).
    """
    n = len(tokens)
    full = max(0, (n - 1) // window)  # windows of window+1 tokens that fit
    for first in range(0, full, batch_size):
        starts = torch.arange(first, min(first + batch_size, full)) * window  # (b,)
        yield _gather(tokens, starts, window + 1)
    tail = full * window
    if n - tail >= 2:
        yield _gather(tokens, torch.tensor([tail]), n - tail)  # (1, n-tail)


def _gather(tokens, starts: torch.Tensor, length: int) -> torch.Tensor:
    """The ``length`` tokens from each of ``starts`` (b,): (b, length) int64."""
    if torch.is_tensor(tokens):
        return tokens[starts[:, None] + torch.arange(length)].long()
    return torch.stack([tokens.window(int(s), length) for s in starts])


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

    def window(self, start: int, length: int) -> torch.Tensor:
        """The span's tokens ``start`` … ``start + length - 1`` as a (length,) int64 tensor."""
        first = self.start + start
        if torch.is_tensor(self.store):
            return self.store[first : first + length].long()
        return self.store.window(first, length)

    def random_windows(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` random windows of ``length`` + 1 tokens: (B, length+1) int64."""
        return random_windows(self._tokens(), batch_size, length, generator)

    def sequential_windows(self, batch_size: int, length: int) -> Iterator[torch.Tensor]:
        """Windows covering the span once, in order (see :func:`sequential_windows`)."""
        return sequential_windows(self._tokens(), batch_size, length)

    def _tokens(self):
        """The span for the window functions: a slice (a view) of a tensor store, else the span,
        which reads its store one window at a time."""
        return self.store[self.start : self.stop] if torch.is_tensor(self.store) else self


def split_span(store, val_fraction: float) -> tuple[TokenSpan, TokenSpan]:
    """The first (1 - val_fraction) of a token store for training, the rest for validation."""
    n_val = round(len(store) * val_fraction)
    return TokenSpan(store, 0, len(store) - n_val, "training"), TokenSpan(store, len(store) - n_val, None, "validation")
