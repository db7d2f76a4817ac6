"""Collators: variable-length token sequences → padded batches with attention masks.

* :func:`pad_batch` — right- or left-padded (B, T) ids and a bool mask (True on real tokens).
* :func:`collate_classification` — an encoder batch plus one class label per row.
* :func:`collate_seq2seq` — (source, target) pairs → an encoder-decoder :class:`LMBatch`.
* :func:`collate_prompts` — left-padded prompts for decoder-only generation, with position ids
  that start at 0 on each prompt's first real token.

Padding reuses :func:`lmlab.objectives.span_corruption.pad_with_mask` and the encoder-decoder
collation of the objectives, so every batch in lmlab is padded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.objectives import LMBatch
from lmlab.objectives.span_corruption import encoder_decoder_batch, pad_with_mask

PAD_SIDES = ("right", "left")

Tokens = Sequence[int] | torch.Tensor


@dataclass
class PaddedBatch:
    """Padded ids and their mask; ``position_ids`` is set for left-padded decoder batches."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    position_ids: torch.Tensor | None = None  # (B, T) int64, 0 at each row's first real token


@dataclass
class ClassificationBatch:
    """An encoder batch with one class id per row."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor  # (B,) int64


def pad_batch(
    seqs: Sequence[Tokens], pad_id: int, *, side: str = "right", max_length: int | None = None
) -> PaddedBatch:
    """Pad sequences to (B, T_max) on ``side``; ``max_length`` first truncates each one.

    Right padding keeps a sequence's first ``max_length`` tokens, left padding its last ones
    (the end of a prompt is what generation continues).
    """
    if side not in PAD_SIDES:
        raise LmlabError(f"side must be one of {', '.join(PAD_SIDES)}, got {side!r}")
    keep_end = side == "left"
    tensors = [_truncated(_as_long(seq), max_length, keep_end) for seq in _checked(seqs)]
    if side == "right":
        input_ids, mask = pad_with_mask(tensors, pad_id)  # (B, T)
        return PaddedBatch(input_ids, mask)
    flipped, mask = pad_with_mask([t.flip(0) for t in tensors], pad_id)  # (B, T) reversed rows
    return PaddedBatch(flipped.flip(1), mask.flip(1))


def collate_classification(
    seqs: Sequence[Tokens], labels: Sequence[int], pad_id: int, max_length: int | None = None
) -> ClassificationBatch:
    """Right-padded encoder inputs (B, T) with their class ids (B,)."""
    if len(labels) != len(seqs):
        raise LmlabError(f"got {len(seqs)} sequences but {len(labels)} labels; pass one label each")
    padded = pad_batch(seqs, pad_id, max_length=max_length)
    return ClassificationBatch(
        padded.input_ids, padded.attention_mask, torch.tensor(list(labels), dtype=torch.long)
    )


def collate_seq2seq(
    sources: Sequence[Tokens],
    targets: Sequence[Tokens],
    *,
    pad_id: int,
    decoder_start_id: int,
    eos_id: int | None = None,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
) -> LMBatch:
    """Encoder-decoder batch: input_ids (B, T_in), labels (B, T_out), decoder inputs and masks.

    With ``eos_id`` each source and target gets it appended (after truncation, which keeps room
    for it). Labels are padded with IGNORE_INDEX; the decoder input is the target shifted right
    behind ``decoder_start_id``.
    """
    if len(sources) != len(targets):
        raise LmlabError(f"got {len(sources)} sources but {len(targets)} targets; pass pairs")
    inputs = [_with_eos(s, eos_id, max_source_length) for s in _checked(sources)]
    outputs = [_with_eos(t, eos_id, max_target_length) for t in targets]
    if any(t.numel() == 0 for t in outputs):
        raise LmlabError("a target sequence is empty; every target needs at least one token")
    return encoder_decoder_batch(inputs, outputs, pad_id=pad_id, decoder_start_id=decoder_start_id)


def collate_prompts(
    prompts: Sequence[Tokens], pad_id: int, max_length: int | None = None
) -> PaddedBatch:
    """Left-padded prompts (B, T) for batched decoder-only generation, with position ids."""
    padded = pad_batch(prompts, pad_id, side="left", max_length=max_length)
    positions = (padded.attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    return PaddedBatch(padded.input_ids, padded.attention_mask, positions)


def _checked(seqs: Sequence[Tokens]) -> Sequence[Tokens]:
    if len(seqs) == 0:
        raise LmlabError("cannot collate an empty batch; pass at least one sequence")
    return seqs


def _as_long(seq: Tokens) -> torch.Tensor:
    """A 1-D int64 tensor of ``seq``'s ids."""
    tensor = torch.as_tensor(seq, dtype=torch.long)
    if tensor.dim() != 1:
        raise LmlabError(f"each sequence must be 1-D token ids, got shape {tuple(tensor.shape)}")
    return tensor


def _truncated(seq: torch.Tensor, max_length: int | None, keep_end: bool = False) -> torch.Tensor:
    if max_length is None:
        return seq
    if max_length < 1:
        raise LmlabError(f"max_length must be at least 1, got {max_length}")
    return seq[-max_length:] if keep_end else seq[:max_length]


def _with_eos(seq: Tokens, eos_id: int | None, max_length: int | None) -> torch.Tensor:
    """``seq`` truncated to ``max_length`` tokens in total, ``eos_id`` last when given."""
    tensor = _as_long(seq)
    if eos_id is None:
        return _truncated(tensor, max_length)
    room = None if max_length is None else max_length - 1
    if room is not None and room < 1:
        raise LmlabError(f"max length {max_length} leaves no room for a token before EOS; use 2+")
    return torch.cat([_truncated(tensor, room), torch.tensor([eos_id])])
