"""The serving engine's batch cache: one static KV cache whose rows are the running requests.

Every row writes its next key/value at one shared write index, so rows of different lengths
share a decode step. Each row's entries are contiguous and end at the write index: row ``r``
holds slots ``[start_r, write)``, its attention mask is "slot ≥ start_r" and the position of
its next token is ``write - start_r`` (its length). Because every row ends at the same index,
slot distances equal token distances (what relative position biases read).

- a request joins with its prompt's keys/values (prefilled in a cache of its own) copied to
  ``[write - L, write)`` of a free row; when ``write < L``, every row first moves right;
- when the write index reaches the cache's end, every row moves left so the longest ends there
  (:meth:`BatchCache.make_room`), one slice copy for the whole batch;
- the running rows are always rows ``[0, n)``: a row that leaves takes the last one's contents,
  so a step runs only the rows in use, through views of the buffers (:meth:`BatchCache.view`).
"""

from __future__ import annotations

import torch

from lmlab.layers.kv_cache import KVCache
from lmlab.models.decoder import DecoderCache


class BatchCache:
    """``rows`` rows of ``length`` positions of ``model``'s KV cache, shared by running requests."""

    def __init__(self, model, rows: int, length: int):
        self.cache: DecoderCache = model.new_cache(rows, length)
        self.layers: list[KVCache] = self.cache.kv_caches()
        self.rows = rows
        self.length = self.cache.max_len
        self.write = 0  # the slot every row's next key/value goes to
        self.starts: list[int] = []  # per running row: the slot of its first entry
        self._views: dict[tuple[int, int], DecoderCache] = {}

    @property
    def used(self) -> int:
        """How many rows hold a running request (rows ``[0, used)``)."""
        return len(self.starts)

    def longest(self) -> int:
        """The length of the longest running row (0 when none runs)."""
        return self.write - min(self.starts) if self.starts else 0

    def add(self, prompt: DecoderCache, length: int, source_row: int = 0, source_end: int | None = None) -> int:
        """A new row holding the ``length`` positions of row ``source_row`` of the cache
        ``prompt`` that end at slot ``source_end`` (default ``length``: a prompt filled from
        slot 0; a left-padded one ends at its cache's end); returns its index."""
        if self.used == self.rows:
            raise RuntimeError("every row of the batch cache is in use")
        if not self.starts:
            self.write = length
        elif length > self.write:
            self.shift_to(length)
        row, lo = self.used, self.write - length
        end = length if source_end is None else source_end
        for mine, theirs in zip(self.layers, prompt.kv_caches()):
            mine.keys[row, :, lo:self.write] = theirs.keys[source_row, :, end - length:end]
            mine.values[row, :, lo:self.write] = theirs.values[source_row, :, end - length:end]
        self.starts.append(lo)
        return row

    def remove(self, row: int) -> None:
        """Row ``row`` leaves; the last running row takes its place (call in descending order
        of rows when several leave)."""
        last = self.used - 1
        if row != last:
            lo = self.starts[last]
            for layer in self.layers:
                layer.keys[row, :, lo:self.write] = layer.keys[last, :, lo:self.write]
                layer.values[row, :, lo:self.write] = layer.values[last, :, lo:self.write]
            self.starts[row] = lo
        self.starts.pop()
        if not self.starts:
            self.write = 0

    def clear(self) -> None:
        """No row runs any more."""
        self.starts, self.write = [], 0

    def make_room(self) -> None:
        """Before a step: when the write index is at the cache's end, move every row left so the
        longest one starts at slot 0."""
        if self.write == self.length:
            self.shift_to(self.longest())

    def shift_to(self, target: int) -> None:
        """Move every running row's entries so they end at slot ``target`` (≥ the longest row)."""
        span, n, shift = self.longest(), self.used, target - self.write
        if shift == 0 or n == 0:
            self.write = target
            return
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                moved = buffer[:n, :, self.write - span:self.write].clone()  # (n, H_kv, span, D)
                buffer[:n, :, target - span:target] = moved
        self.starts = [start + shift for start in self.starts]
        self.write = target

    def advance(self) -> None:
        """Every row wrote its key/value at the write index."""
        self.write += 1

    def view(self, lo: int, hi: int) -> DecoderCache:
        """A cache over rows ``[lo, hi)`` (views of the same buffers, contiguous)."""
        view = self._views.get((lo, hi))
        if view is None:
            view = self._views[(lo, hi)] = DecoderCache([_rows_of(layer, lo, hi) for layer in self.layers])
        return view

    def padding(self, lo: int, hi: int) -> dict[str, torch.Tensor]:
        """The ``attention_mask`` (n, write+1) and ``position_ids`` (n, 1) of rows ``[lo, hi)``
        for a step that writes at the write index."""
        device = self.layers[0].keys.device
        starts = torch.tensor(self.starts[lo:hi], device=device)  # (n,)
        mask = torch.arange(self.write + 1, device=device)[None, :] >= starts[:, None]  # (n, write+1)
        return dict(attention_mask=mask, position_ids=(self.write - starts)[:, None])


def _rows_of(layer: KVCache, lo: int, hi: int) -> KVCache:
    """A :class:`KVCache` whose buffers are rows ``[lo, hi)`` of ``layer``'s."""
    keys = layer.keys
    view = KVCache(0, keys.size(1), keys.size(2), keys.size(3), keys.dtype, keys.device)
    view.keys, view.values = layer.keys[lo:hi], layer.values[lo:hi]
    return view
