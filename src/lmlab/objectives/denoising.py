"""BART denoising: corrupt a document with one or more noise functions, decode the original.

The noise functions of the BART paper, at the token level, applied in this order when enabled
(sentence permutation first, while full stops are intact; rotation last, as in fairseq):

1. sentence permutation: split after every ``sentence_end_ids`` token and shuffle all sentences;
2. token masking: each token becomes ``mask_id`` with probability ``token_mask_prob``;
3. token deletion: each token is dropped with probability ``token_delete_prob``;
4. text infilling: fairseq's ``add_whole_word_mask`` with a Poisson(λ) span distribution and
   ``replace_length=1``: ``ceil(ratio * n)`` tokens are budgeted into spans; each span keeps one
   mask token in place of its first token and deletes the rest (overlapping spans merge), and
   every zero-length span inserts a mask token at a random position;
5. document rotation: rotate so that a uniformly random token comes first.

The default, BART's best configuration, is text infilling of 30% plus sentence permutation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import LMBatch
from lmlab.objectives.span_corruption import encoder_decoder_batch

MAX_SPAN_LENGTH = 128  # fairseq truncates the Poisson span distribution to lengths 0..127


@dataclass(frozen=True)
class DenoisingConfig:
    """Which BART noise functions to apply; a zero probability or False turns one off."""

    token_mask_prob: float = 0.0
    token_delete_prob: float = 0.0
    infill_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    rotate_document: bool = False

    def __post_init__(self) -> None:
        for name in ("token_mask_prob", "token_delete_prob", "infill_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LmlabError(f"{name} must be in [0, 1), got {value}")
        if not self.poisson_lambda > 0:
            raise LmlabError(f"poisson_lambda must be > 0, got {self.poisson_lambda}")


def denoising_batch(
    docs: Sequence[torch.Tensor],
    generator: torch.Generator,
    *,
    mask_id: int,
    pad_id: int,
    config: DenoisingConfig = DenoisingConfig(),
    sentence_end_ids: Sequence[int] = (),
    bos_id: int | None = None,
    eos_id: int | None = None,
    decoder_start_id: int | None = None,
) -> LMBatch:
    """Noise each document and collate an encoder-decoder batch that reconstructs the original.

    docs: 1-D LongTensors without BOS/EOS. Encoder input = [bos] noised [eos] and labels =
    [bos] original [eos] (each of bos/eos only if given); the decoder input is the labels
    shifted right after ``decoder_start_id`` (default ``eos_id``, as BART does).
    """
    start = eos_id if decoder_start_id is None else decoder_start_id
    if start is None:
        raise LmlabError("denoising needs decoder_start_id or eos_id to start the decoder")
    if len(docs) == 0:
        raise LmlabError("denoising needs at least one document")
    noised = [
        bart_noise(
            doc, generator, config=config, mask_id=mask_id, sentence_end_ids=sentence_end_ids
        )
        for doc in docs
    ]
    return encoder_decoder_batch(
        [_wrap(n, bos_id, eos_id) for n in noised],
        [_wrap(torch.as_tensor(d, dtype=torch.long), bos_id, eos_id) for d in docs],
        pad_id=pad_id,
        decoder_start_id=start,
    )


def bart_noise(
    ids: torch.Tensor,
    generator: torch.Generator,
    *,
    config: DenoisingConfig,
    mask_id: int,
    sentence_end_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Apply the noise functions enabled in ``config`` to one document. ids: (L,) → (L',)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise LmlabError("denoising needs non-empty 1-D documents")
    if config.permute_sentences:
        if not sentence_end_ids:
            raise LmlabError("sentence permutation needs sentence_end_ids (or turn it off)")
        ids = permute_sentences(ids, sentence_end_ids, generator)
    if config.token_mask_prob > 0:
        ids = mask_tokens(ids, config.token_mask_prob, mask_id, generator)
    if config.token_delete_prob > 0:
        ids = delete_tokens(ids, config.token_delete_prob, generator)
    if config.infill_ratio > 0:
        ids = infill_spans(ids, config.infill_ratio, mask_id, generator, config.poisson_lambda)
    if config.rotate_document:
        ids = rotate_document(ids, generator)
    return ids


def permute_sentences(
    ids: torch.Tensor, sentence_end_ids: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """Shuffle the sentences (each ends after a ``sentence_end_ids`` token; trailing tokens form
    a last sentence). ids: (L,) → (L,)."""
    is_end = torch.isin(ids, torch.tensor(list(sentence_end_ids)))  # (L,)
    cuts = (is_end.nonzero().flatten() + 1).tolist()
    sentences = torch.tensor_split(ids, [c for c in cuts if c < ids.numel()])
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return torch.cat([sentences[i] for i in order])


def mask_tokens(
    ids: torch.Tensor, prob: float, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Replace each token by ``mask_id`` with probability ``prob``. ids: (L,) → (L,)."""
    return ids.masked_fill(torch.rand(ids.shape, generator=generator) < prob, mask_id)


def delete_tokens(ids: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each token with probability ``prob``. ids: (L,) → (L',)."""
    return ids[torch.rand(ids.shape, generator=generator) >= prob]


def rotate_document(ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate so that a uniformly chosen token comes first. ids: (L,) → (L,)."""
    if ids.numel() == 0:
        return ids
    offset = int(torch.randint(ids.numel(), (1,), generator=generator))
    return torch.roll(ids, -offset)


def sample_span_lengths(
    count: int, poisson_lambda: float, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``count`` span lengths from Poisson(λ) truncated to [0, 128), as fairseq does."""
    k = torch.arange(MAX_SPAN_LENGTH, dtype=torch.float64)  # (K,)
    log_pmf = k * math.log(poisson_lambda) - poisson_lambda - torch.lgamma(k + 1)  # (K,)
    return torch.multinomial(log_pmf.exp(), count, replacement=True, generator=generator)


def infill_spans(
    ids: torch.Tensor,
    ratio: float,
    mask_id: int,
    generator: torch.Generator,
    poisson_lambda: float = 3.0,
) -> torch.Tensor:
    """BART text infilling: replace Poisson-length spans covering ~``ratio`` of the tokens by
    one ``mask_id`` each; zero-length spans insert a mask. ids: (L,) → (L',)."""
    budget = math.ceil(ids.numel() * ratio)
    if budget == 0:
        return ids
    lengths = _lengths_within_budget(budget, poisson_lambda, generator)  # (S,)
    spans = lengths[lengths > 0]  # (S',)
    starts = torch.randperm(ids.numel(), generator=generator)[: spans.numel()]  # (S',)
    offsets = torch.arange(int(spans.max()))  # (M,) budget >= 1, so some span is non-empty
    positions = starts[:, None] + offsets[None, :]  # (S', M)
    inside = (offsets[None, :] >= 1) & (offsets[None, :] < spans[:, None])  # (S', M)
    inside &= positions < ids.numel()
    continuation = torch.zeros(ids.numel(), dtype=torch.bool)  # (L,)
    continuation[positions[inside]] = True
    masked = ids.clone()  # (L,)
    masked[starts] = mask_id
    kept = masked[~continuation]  # (L',)
    return _insert_masks(kept, lengths.numel() - spans.numel(), mask_id, generator)


def _lengths_within_budget(
    budget: int, poisson_lambda: float, generator: torch.Generator
) -> torch.Tensor:
    """fairseq's span lengths: draw until they cover ``budget``, trim the last to fit exactly."""
    lengths = sample_span_lengths(budget, poisson_lambda, generator)  # (S,)
    while int(lengths.sum()) < budget:
        more = sample_span_lengths(budget, poisson_lambda, generator)
        lengths = torch.cat([lengths, more])
    cumulative = lengths.cumsum(0)  # (S,)
    last = int((cumulative < budget).sum())
    lengths = lengths[: last + 1].clone()
    lengths[last] = budget - (int(cumulative[last - 1]) if last > 0 else 0)
    return lengths


def _insert_masks(
    ids: torch.Tensor, count: int, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Insert ``count`` mask tokens at uniformly random positions. ids: (L,) → (L+count,)."""
    if count == 0:
        return ids
    total = ids.numel() + count
    is_mask = torch.zeros(total, dtype=torch.bool)  # (L+count,)
    is_mask[torch.randperm(total, generator=generator)[:count]] = True
    result = torch.full((total,), mask_id, dtype=torch.long)  # (L+count,)
    result[~is_mask] = ids
    return result


def _wrap(ids: torch.Tensor, bos_id: int | None, eos_id: int | None) -> torch.Tensor:
    """``ids`` with ``bos_id`` prepended and ``eos_id`` appended, each only if given."""
    head = [] if bos_id is None else [bos_id]
    tail = [] if eos_id is None else [eos_id]
    return torch.cat(
        [torch.tensor(head, dtype=torch.long), ids, torch.tensor(tail, dtype=torch.long)]
    )
