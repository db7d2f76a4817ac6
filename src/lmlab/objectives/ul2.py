"""UL2's mixture of denoisers (Tay et al., 2022) for encoder-decoder models.

Each example gets one denoiser, drawn with the generator:

- R (regular span corruption, mode token ``[NLU]``): (μ=3, r=0.15), (μ=8, r=0.15);
- X (extreme span corruption, ``[NLG]``): (μ=3, r=0.5), (μ=8, r=0.5), (μ=64, r=0.15),
  (μ=64, r=0.5);
- S (sequential prefix LM, ``[S2S]``): the first 75% of the document is the input, the last 25%
  (``round(0.25 * n)``, at least 1 token and at most n-1) the target.

R and X are T5 span corruption with the given mean span length μ and noise density r. The mode
token is prepended to the encoder input; inputs and targets end with EOS. Default mixing rates:
R, X and S each 1/3, split equally inside a group (R denoisers 1/6 each, X denoisers 1/12 each,
S 1/3). For decoder-only models use :mod:`lmlab.objectives.prefix_lm` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import LMBatch
from lmlab.objectives.span_corruption import check_noise_args, corrupt_spans, encoder_decoder_batch


@dataclass(frozen=True)
class Denoiser:
    """One UL2 denoiser: its group (``"R"``, ``"X"`` or ``"S"``), mean span length μ (unused by
    S) and rate r (noise density for R/X, target fraction for S)."""

    group: str
    mean_span_length: float
    rate: float

    def __post_init__(self) -> None:
        if self.group not in ("R", "X", "S"):
            raise LmlabError(f"denoiser group must be 'R', 'X' or 'S', got {self.group!r}")
        check_noise_args(self.rate, self.mean_span_length)


DEFAULT_DENOISERS: tuple[Denoiser, ...] = (
    Denoiser("R", 3.0, 0.15),
    Denoiser("R", 8.0, 0.15),
    Denoiser("X", 3.0, 0.5),
    Denoiser("X", 8.0, 0.5),
    Denoiser("X", 64.0, 0.15),
    Denoiser("X", 64.0, 0.5),
    Denoiser("S", 1.0, 0.25),
)
DEFAULT_RATES: tuple[float, ...] = (1 / 6, 1 / 6, 1 / 12, 1 / 12, 1 / 12, 1 / 12, 1 / 3)


@dataclass
class UL2Batch:
    """An encoder-decoder batch and the denoiser each example was given (one per row)."""

    batch: LMBatch
    denoisers: list[Denoiser]


def ul2_batch(
    docs: Sequence[torch.Tensor],
    generator: torch.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    nlu_id: int,
    nlg_id: int,
    s2s_id: int,
    denoisers: Sequence[Denoiser] = DEFAULT_DENOISERS,
    rates: Sequence[float] = DEFAULT_RATES,
) -> UL2Batch:
    """Give each document a denoiser drawn with probabilities ``rates`` and collate the batch.

    docs: 1-D LongTensors of at least 2 tokens, without EOS. ``nlu_id``/``nlg_id``/``s2s_id`` are
    the mode tokens of R/X/S. The decoder starts from ``pad_id``, as in T5.
    """
    if any(len(doc) < 2 for doc in docs):
        raise LmlabError("UL2 needs documents of at least 2 tokens")
    choice = _draw_denoisers(len(docs), denoisers, rates, generator)  # (B,)
    mode_ids = {"R": nlu_id, "X": nlg_id, "S": s2s_id}
    inputs, targets, chosen = [], [], []
    for doc, index in zip(docs, choice.tolist()):
        denoiser = denoisers[index]
        doc = torch.as_tensor(doc, dtype=torch.long)
        enc, dec = _denoise(doc, denoiser, generator, sentinel_ids, eos_id)
        inputs.append(torch.cat([torch.tensor([mode_ids[denoiser.group]]), enc]))
        targets.append(dec)
        chosen.append(denoiser)
    batch = encoder_decoder_batch(inputs, targets, pad_id=pad_id, decoder_start_id=pad_id)
    return UL2Batch(batch=batch, denoisers=chosen)


def sequential_split(
    ids: torch.Tensor, target_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The S-denoiser's split: (prefix, suffix) with ``round(fraction * n)`` tokens, clamped to
    [1, n-1], in the suffix. ids: (L,) → (L-k,), (k,)."""
    num_target = min(max(round(len(ids) * target_fraction), 1), len(ids) - 1)
    return ids[: len(ids) - num_target], ids[len(ids) - num_target :]


def _draw_denoisers(
    count: int, denoisers: Sequence[Denoiser], rates: Sequence[float], generator: torch.Generator
) -> torch.Tensor:
    """Indices (count,) into ``denoisers``, drawn independently with probabilities ``rates``."""
    if count == 0:
        raise LmlabError("UL2 needs at least one document")
    if len(rates) != len(denoisers) or not denoisers:
        raise LmlabError(f"got {len(rates)} rates for {len(denoisers)} denoisers; give one each")
    weights = torch.tensor(rates, dtype=torch.float64)  # (D,)
    if (weights < 0).any() or weights.sum() <= 0:
        raise LmlabError("UL2 mixing rates must be non-negative and not all zero")
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def _denoise(
    ids: torch.Tensor,
    denoiser: Denoiser,
    generator: torch.Generator,
    sentinel_ids: Sequence[int],
    eos_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One document's (encoder input, target) under ``denoiser``, both ending in EOS."""
    eos = torch.tensor([eos_id])
    if denoiser.group == "S":
        prefix, suffix = sequential_split(ids, denoiser.rate)
        return torch.cat([prefix, eos]), torch.cat([suffix, eos])
    return corrupt_spans(
        ids,
        generator,
        sentinel_ids=sentinel_ids,
        eos_id=eos_id,
        noise_density=denoiser.rate,
        mean_noise_span_length=denoiser.mean_span_length,
    )
