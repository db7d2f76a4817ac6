"""A static key/value cache: preallocated once, written in place at the current position.

Beam search reorders the cache's rows every step. Where every layer reads its keys through the
native :func:`~lmlab.kernels.decode_attention` kernel, nothing moves: a table shared by the
layers (:class:`RowSources`) records which buffer row holds each (row, position), and the kernel
reads through it. Otherwise the rows that change are copied.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.kernels import decode_attention


class KVCache(nn.Module):
    """Keys and values of one attention layer for every position decoded so far.

    The buffers are allocated for ``max_len`` positions up front; :meth:`update` writes the new
    positions in place and returns views of everything up to them, so decoding never concatenates.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.sources: RowSources | None = None  # shared by the layers of a model's cache once beams follow it
        self.read_natively = False  # whether the last step's attention ran in the native kernel

    @property
    def max_len(self) -> int:
        return self.keys.size(2)

    def update(
        self, start_pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, D) at positions [start_pos, start_pos+T) of each row's own buffer
        row; return all keys/values so far (see :meth:`read`)."""
        end = start_pos + k.size(2)
        self.keys[:, :, start_pos:end] = k
        self.values[:, :, start_pos:end] = v
        return self.read(end)

    def read(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's keys and values over positions [0, end): (B, H_kv, end, D) each — views of
        the buffers, or gathered copies while the rows follow a :class:`RowSources` table."""
        self.read_natively = False
        if self.sources is None or self.sources.identity:
            return self.keys[:, :, :end], self.values[:, :, :end]
        return self.sources.gather(self.keys, end), self.sources.gather(self.values, end)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, allowed: torch.Tensor | None) -> torch.Tensor | None:
        """Store k, v (B, H_kv, T, D) at positions [start_pos, start_pos+T) and return the attention
        of the queries q (B, H, T, D) over the cache, both in the native kernel: (B, T, H, D). None,
        with nothing stored, where the kernel does not apply (then :meth:`update`). allowed: see
        :func:`~lmlab.kernels.decode_attention` (None: causal)."""
        out = decode_attention(q, k, v, self.keys, self.values, start_pos, self.row_table(), allowed)
        self.read_natively = out is not None
        return out

    def row_table(self) -> torch.Tensor | None:
        """(B, S_max) int32: which buffer row holds each (row, position), for the native kernels;
        None while every row holds its own."""
        return self.sources.table if self.sources is not None and not self.sources.identity else None

    def copy_rows_from(self, other: "KVCache", index: torch.Tensor) -> None:
        """Rows of this cache become rows ``index`` (B,) of ``other``, over ``other``'s positions
        (a prompt prefilled once, then given to every beam)."""
        n = other.max_len
        self.keys[:, :, :n] = other.keys.index_select(0, index)
        self.values[:, :, :n] = other.values.index_select(0, index)
        if self.sources is not None:
            self.sources.reset()

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` (B,) of before, in place (beam search keeps the best beams);
        only the rows that change, and only their first ``length`` positions (default: all), move."""
        reorder_layers([self], index, length)

    def move_rows(self, moved: torch.Tensor, sources: torch.Tensor, length: int | None = None) -> None:
        """Rows ``moved`` (n,) become rows ``sources`` (n,) of before, over the first ``length``
        positions (see :func:`changed_rows`; a multi-layer cache computes those once)."""
        if moved.numel() == 0:
            return
        for buffer in (self.keys[:, :, :length], self.values[:, :, :length]):
            buffer.index_copy_(0, moved, buffer.index_select(0, sources))  # gathered first: no aliasing

    def settle(self, length: int) -> None:
        """Move what the :class:`RowSources` table points at into each row's own buffer row, over
        the first ``length`` positions (the table is then the identity there)."""
        self.keys[:, :, :length] = self.sources.gather(self.keys, length)
        self.values[:, :, :length] = self.sources.gather(self.values, length)


class RowSources:
    """Which buffer row holds each (row, position) of the caches of a model's layers, after beam
    search reordered rows without moving their contents. New positions are written to each
    row's own buffer row, so the table is the identity beyond the positions filled so far."""

    def __init__(self, batch_size: int, max_len: int, device: torch.device):
        self.own = torch.arange(batch_size, dtype=torch.int32, device=device)[:, None]  # (B, 1)
        self.table = self.own.repeat(1, max_len)  # (B, S_max) int32
        self.identity = True

    def follow(self, index: torch.Tensor, length: int) -> None:
        """Rows become rows ``index`` (B,) of before over positions [0, length)."""
        self.table[:, :length] = self.table.index_select(0, index)[:, :length]
        self.table[:, length:] = self.own
        self.identity = False

    def reset(self) -> None:
        """Every row holds its own positions again (after :meth:`KVCache.settle`)."""
        self.table[:] = self.own
        self.identity = True

    def gather(self, buffer: torch.Tensor, end: int) -> torch.Tensor:
        """buffer (B, H, S_max, D) read through the table over positions [0, end) → (B, H, end, D)."""
        positions = torch.arange(end, device=buffer.device)  # (end,)
        return buffer[self.table[:, :end].long(), :, positions].permute(0, 2, 1, 3)  # (B, end, H, D) → (B, H, end, D)


def reorder_layers(caches: list[KVCache], index: torch.Tensor, length: int | None = None) -> None:
    """Rows of every layer's cache become rows ``index`` (B,) of before, over the first ``length``
    positions (default: all). When every layer's last step ran in the native kernel, only the
    shared :class:`RowSources` table changes; otherwise the rows that change are copied."""
    first = caches[0]
    length = first.max_len if length is None else length
    if all(cache.read_natively for cache in caches):
        if first.sources is None:
            shared = RowSources(first.keys.size(0), first.max_len, first.keys.device)
            for cache in caches:
                cache.sources = shared
        first.sources.follow(index, length)
        return
    if first.sources is not None and not first.sources.identity:
        for cache in caches:
            cache.settle(length)
        first.sources.reset()
    moved, sources = changed_rows(index)
    for cache in caches:
        cache.move_rows(moved, sources, length)


def changed_rows(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a row reorder ``index`` (B,) (row i becomes row index[i]): the rows that change (n,)
    and the rows they take their contents from (n,)."""
    moved = (index != torch.arange(index.numel(), device=index.device)).nonzero().squeeze(1)
    return moved, index.index_select(0, moved)


class CrossAttentionCache:
    """Keys and values a cross-attention layer projected from the encoder output.

    They depend only on the encoder output, so they are computed at the first decoding step and
    reused at every later one; make a new cache for a new encoder output.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (B, H_kv, S, D)
        self.values: torch.Tensor | None = None
