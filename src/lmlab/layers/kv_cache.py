"""A static key/value cache: preallocated once, written in place at the current position."""

from __future__ import annotations

import torch
from torch import nn


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

    @property
    def max_len(self) -> int:
        return self.keys.size(2)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, D) at positions [start_pos, start_pos+T); return views of all
        keys/values so far, (B, H_kv, start_pos+T, D) each."""
        end = start_pos + k.size(2)
        self.keys[:, :, start_pos:end] = k
        self.values[:, :, start_pos:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]

    def copy_rows_from(self, other: "KVCache", index: torch.Tensor) -> None:
        """Rows of this cache become rows ``index`` (B,) of ``other``, over ``other``'s positions
        (a prompt prefilled once, then given to every beam)."""
        n = other.max_len
        self.keys[:, :, :n] = other.keys.index_select(0, index)
        self.values[:, :, :n] = other.values.index_select(0, index)

    def reorder(self, index: torch.Tensor, length: int | None = None) -> None:
        """Rows become rows ``index`` (B,) of before, in place (beam search keeps the best beams);
        only the rows that change, and only their first ``length`` positions (default: all), move."""
        reorder_rows([self], index, length)

    def move_rows(self, moved: torch.Tensor, sources: torch.Tensor, length: int | None = None) -> None:
        """Rows ``moved`` (n,) become rows ``sources`` (n,) of before, over the first ``length``
        positions (default: all; see :func:`changed_rows`)."""
        if moved.numel() == 0:
            return
        for buffer in (self.keys[:, :, :length], self.values[:, :, :length]):
            buffer.index_copy_(0, moved, buffer.index_select(0, sources))  # gathered first: no aliasing


def reorder_rows(caches: list[KVCache], index: torch.Tensor, length: int | None = None) -> None:
    """Rows of every cache become rows ``index`` (B,) of before, in place, over the first
    ``length`` positions (default: all); only the rows that change move (beam search)."""
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
