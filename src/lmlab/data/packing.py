"""Document-aware packing: tokenised documents concatenated into fixed-length rows.

Each document is followed by ``eos_id`` and the stream is cut into rows of ``row_length`` tokens,
so a long document continues on the next row and no padding is wasted but the last row's. Each
row comes with *segment ids*: 0 for the first document (or document piece) in the row, 1 for the
next, ..., and -1 on padding, so attention can later be restricted to tokens of the same document
(:func:`document_attention_mask`) and positions restarted per document (:func:`segment_positions`).

For causal language modelling pick ``row_length = context_length + 1``: a row then holds the
inputs and the shifted labels of one window, like :func:`lmlab.data.windows.random_windows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from lmlab.errors import LmlabError

PAD_SEGMENT = -1  # segment id of padding positions


@dataclass
class PackedRows:
    """Packed rows and the document each of their tokens belongs to."""

    input_ids: torch.Tensor  # (N, T) int64 token ids
    segment_ids: torch.Tensor  # (N, T) int64, 0, 1, ... per document within a row; -1 = padding


def iter_packed_rows(
    documents: Iterable[Sequence[int] | torch.Tensor],
    row_length: int,
    eos_id: int,
    pad_id: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream (ids (T,), segment_ids (T,)) rows from tokenised documents, EOS after each one.

    The last, partial row is padded with ``pad_id`` (segment -1), or dropped when ``pad_id`` is
    None. Memory stays bounded by one row plus the longest document.
    """
    if not isinstance(row_length, int) or row_length < 1:
        raise LmlabError(f"row_length must be a positive integer, got {row_length!r}")
    ids: list[int] = []
    docs: list[int] = []  # document number (in the stream) of each buffered token
    for number, document in enumerate(documents):
        tokens = document.tolist() if isinstance(document, torch.Tensor) else list(document)
        ids.extend(tokens)
        ids.append(eos_id)
        docs.extend([number] * (len(tokens) + 1))
        start = 0
        while len(ids) - start >= row_length:
            yield _row(ids[start : start + row_length], docs[start : start + row_length])
            start += row_length
        del ids[:start], docs[:start]
    if ids and pad_id is not None:
        padding = row_length - len(ids)
        row_ids, segments = _row(ids, docs)
        yield (
            torch.cat([row_ids, torch.full((padding,), pad_id)]),
            torch.cat([segments, torch.full((padding,), PAD_SEGMENT)]),
        )


def _row(ids: list[int], docs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row: its ids (T,) and segment ids (T,) counted from its first document."""
    numbers = torch.tensor(docs)  # (T,)
    return torch.tensor(ids, dtype=torch.long), numbers - numbers[0]


def pack_documents(
    documents: Iterable[Sequence[int] | torch.Tensor],
    row_length: int,
    eos_id: int,
    pad_id: int | None = None,
) -> PackedRows:
    """All rows of :func:`iter_packed_rows` stacked: input_ids and segment_ids (N, T)."""
    rows = list(iter_packed_rows(documents, row_length, eos_id, pad_id))
    if not rows:
        raise LmlabError(
            f"the documents fill no row of {row_length} tokens; pass pad_id to keep a partial "
            "row or use a shorter row_length"
        )
    return PackedRows(
        input_ids=torch.stack([ids for ids, _ in rows]),  # (N, T)
        segment_ids=torch.stack([segments for _, segments in rows]),  # (N, T)
    )


def document_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids → (B, T, T) bool, True where query and key are in the same document.

    Padding attends to nothing and is attended by nothing. Combine with a causal mask for a
    decoder.
    """
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    real = segment_ids != PAD_SEGMENT  # (B, T)
    return same & real[:, :, None] & real[:, None, :]


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids → (B, T) positions that restart at 0 where each document starts.

    Segment ids must be non-decreasing along a row (padding only at the end), as packing makes
    them; padding gets position 0.
    """
    B, T = segment_ids.shape
    index = torch.arange(T).expand(B, T)  # (B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)  # (B, T) True where a segment starts
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # (B, T)
    return torch.where(segment_ids == PAD_SEGMENT, 0, index - start_index)
