"""BERT masked language modelling: corrupt a random 15% of tokens and predict the originals.

Every maskable token (not padding, not a special id) is chosen independently with probability
``mask_prob`` (the Hugging Face collator's rule; BERT's own script picks exactly
``round(15% * n)``, which has the same mean). Each chosen token becomes the mask id with
probability 0.8, a random non-special token with probability 0.1, and stays unchanged otherwise;
these decisions are made per token, also under whole-word masking, as BERT does.
With whole-word masking, the unit chosen with probability ``mask_prob`` is a word (a word-start
token and the continuation pieces after it), so all pieces of a chosen word are predicted together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, LMBatch

WordStart = torch.Tensor | Callable[[int], bool]


def mlm_batch(
    ids: torch.Tensor | Sequence[torch.Tensor],
    generator: torch.Generator,
    *,
    mask_id: int,
    pad_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    mask_prob: float = 0.15,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
    word_start: WordStart | None = None,
) -> LMBatch:
    """Mask tokens BERT-style and return the encoder batch with labels at the chosen positions.

    ids: (B, T) LongTensor padded with ``pad_id``, or a list of 1-D LongTensors (padded here).
    word_start: optional whole-word masking: a (B, T) bool tensor, True where a token starts a
    word, or a callable ``token_id -> bool`` saying whether that id starts a word (e.g. a WordPiece
    id not beginning with ``##``). Special ids and padding are never chosen and always split words.
    Returns input_ids (B, T), labels (B, T) (original id where chosen, IGNORE_INDEX elsewhere) and
    attention_mask (B, T) (False on padding).
    """
    ids = _as_padded(ids, pad_id)  # (B, T)
    excluded = sorted(set(special_ids) | {pad_id, mask_id})
    _check_args(mask_prob, mask_token_rate, random_token_rate, vocab_size, len(excluded))
    attention_mask = ids != pad_id  # (B, T)
    maskable = attention_mask & ~torch.isin(ids, torch.tensor(excluded))  # (B, T)
    if word_start is None:
        chosen = maskable & (torch.rand(ids.shape, generator=generator) < mask_prob)  # (B, T)
    else:
        starts = _word_start_mask(ids, word_start)  # (B, T)
        chosen = _choose_whole_words(starts, maskable, mask_prob, generator)  # (B, T)
    action = torch.rand(ids.shape, generator=generator)  # (B, T) picks mask / random / keep
    allowed = _allowed_random_ids(vocab_size, excluded)  # (V',)
    random_ids = allowed[torch.randint(len(allowed), ids.shape, generator=generator)]  # (B, T)
    to_mask = chosen & (action < mask_token_rate)  # (B, T)
    to_random = chosen & (action >= mask_token_rate) & (
        action < mask_token_rate + random_token_rate
    )  # (B, T)
    input_ids = torch.where(to_mask, torch.full_like(ids, mask_id), ids)  # (B, T)
    input_ids = torch.where(to_random, random_ids, input_ids)  # (B, T)
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)  # (B, T)
    return LMBatch(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def _as_padded(ids: torch.Tensor | Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    """A (B, T) LongTensor: ``ids`` itself, or the 1-D sequences right-padded with ``pad_id``."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 2 or ids.numel() == 0:
            raise LmlabError("MLM needs a non-empty (B, T) tensor of token ids")
        return ids.long()
    if len(ids) == 0 or any(len(row) == 0 for row in ids):
        raise LmlabError("MLM needs at least one sequence and no empty sequences")
    return torch.nn.utils.rnn.pad_sequence(
        [torch.as_tensor(row, dtype=torch.long) for row in ids],
        batch_first=True,
        padding_value=pad_id,
    )


def _check_args(
    mask_prob: float, mask_rate: float, random_rate: float, vocab_size: int, num_excluded: int
) -> None:
    """Raise LmlabError for probabilities outside their ranges or a vocabulary of only specials."""
    if not 0.0 < mask_prob < 1.0:
        raise LmlabError(f"mask_prob must be in (0, 1), got {mask_prob}")
    if mask_rate < 0.0 or random_rate < 0.0 or mask_rate + random_rate > 1.0:
        raise LmlabError(
            f"mask_token_rate ({mask_rate}) and random_token_rate ({random_rate}) must be "
            "non-negative and sum to at most 1"
        )
    if vocab_size <= num_excluded:
        raise LmlabError(f"vocab_size {vocab_size} leaves no non-special token to sample")


def _allowed_random_ids(vocab_size: int, excluded: list[int]) -> torch.Tensor:
    """Ids a chosen token may be replaced with: the vocabulary minus special, pad and mask ids."""
    keep = torch.ones(vocab_size, dtype=torch.bool)  # (V,)
    keep[[i for i in excluded if 0 <= i < vocab_size]] = False
    return torch.arange(vocab_size)[keep]  # (V',)


def _word_start_mask(ids: torch.Tensor, word_start: WordStart) -> torch.Tensor:
    """The (B, T) bool word-start mask, given directly or computed per distinct id by a callable."""
    if isinstance(word_start, torch.Tensor):
        if word_start.shape != ids.shape:
            raise LmlabError(
                f"word_start has shape {tuple(word_start.shape)}, expected {tuple(ids.shape)}"
            )
        return word_start.bool()
    distinct, inverse = torch.unique(ids, return_inverse=True)  # (U,), (B, T)
    starts = torch.tensor([bool(word_start(int(i))) for i in distinct])  # (U,)
    return starts[inverse]  # (B, T)


def _choose_whole_words(
    starts: torch.Tensor, maskable: torch.Tensor, mask_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Choose each word with probability ``mask_prob``; return the (B, T) mask of its pieces.

    A word begins at a word-start token, at the start of a row, and at or after any token that
    is not maskable, so special tokens and padding never join two words.
    """
    boundary = starts | ~maskable  # (B, T)
    boundary[:, 1:] |= ~maskable[:, :-1]
    boundary[:, 0] = True
    word_ids = boundary.flatten().long().cumsum(0) - 1  # (B*T,) word index of each token
    word_chosen = torch.rand(int(word_ids[-1]) + 1, generator=generator) < mask_prob  # (W,)
    return word_chosen[word_ids].view_as(maskable) & maskable  # (B, T)
