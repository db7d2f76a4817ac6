"""Beam search's row table: which buffer row of the KV caches holds each (row, position).

Beam search reorders the cache's rows every step. Where every layer reads its keys through the
native cache kernels, nothing needs to move: the table records where each row's positions are,
and the kernels read through it. A layer that must read the buffers directly (a fallback to
PyTorch) first :meth:`~RowTable.settle`\\ s the table: the rows are moved to where the table says,
and the table is the identity again.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from lmlab.layers.kv_cache import KVCache

_in_use: ContextVar["RowTable | None"] = ContextVar("lmlab_row_table", default=None)


class RowTable:
    """The row table of one decoding's caches (every layer's, shared). New positions are written
    to each row's own buffer row, so the table is the identity beyond the positions filled so far."""

    def __init__(self, caches: list[KVCache]):
        first = caches[0].keys
        self.caches = caches
        self.own = torch.arange(first.size(0), dtype=torch.int32, device=first.device)[:, None]  # (B, 1)
        self.table = self.own.repeat(1, first.size(2))  # (B, S_max) int32
        self.identity = True
        self.length = 0  # positions the table covers
        self.fell_back = False  # a layer had to read the buffers directly: following rows did not pay

    def follow(self, index: torch.Tensor, length: int) -> None:
        """Rows become rows ``index`` (B,) of before over positions [0, length)."""
        self.table[:, :length] = self.table.index_select(0, index)[:, :length]
        self.table[:, length:] = self.own
        self.identity = False
        self.length = length

    def for_kernels(self) -> torch.Tensor | None:
        """(B, S_max) int32 for the native kernels; None while every row holds its own."""
        return None if self.identity else self.table

    def settle(self) -> None:
        """Move what the table points at into each row's own buffer row, in every cache; the
        table is then the identity."""
        if self.identity:
            return
        self.fell_back = True
        n = self.length
        positions = torch.arange(n, device=self.table.device)  # (n,)
        rows = self.table[:, :n].long()  # (B, n)
        for cache in self.caches:
            for buffer in (cache.keys, cache.values):
                buffer[:, :, :n] = buffer[rows, :, positions].permute(0, 2, 1, 3)  # (B, n, H, D) → (B, H, n, D)
        self.table[:] = self.own
        self.identity = True

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Within the block, the native attention modules read the caches through this table."""
        token = _in_use.set(self)
        try:
            yield
        finally:
            _in_use.reset(token)


def rows_in_use() -> RowTable | None:
    """The table of the decoding step running now (see :meth:`RowTable.in_use`), or None."""
    return _in_use.get()
