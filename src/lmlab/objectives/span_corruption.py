"""T5 span corruption: drop random spans from the input and make the model write them back.

This follows T5's ``random_spans_noise_mask`` / ``noise_span_to_unique_sentinel``
(google-research/text-to-text-transfer-transformer, ``t5/data/preprocessors.py``), with the same
float32 rounding, drawing randomness from a ``torch.Generator``. For a document ``a b c d e f``
with noise mask ``. . X X . X`` and sentinels ``s0, s1``::

    input  = a b s0 e s1 </s>
    target = s0 c d s1 f </s>

The only departure from T5: where T5 would fail because there are fewer tokens than spans
(very high density with short spans), the number of spans is lowered to fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, LMBatch


def random_spans_noise_mask(
    length: int,
    generator: torch.Generator,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> torch.Tensor:
    """T5's noise mask: a (length,) bool tensor, True on the tokens to drop.

    ``round(length * noise_density)`` tokens (clamped to [1, length-1]) are noise, split into
    ``round(num_noise / mean_noise_span_length)`` spans (at least 1); the mask alternates
    non-noise and noise spans, starting with non-noise, with random span lengths.
    """
    check_noise_args(noise_density, mean_noise_span_length)
    if length < 1:
        raise LmlabError("span corruption needs a non-empty document")
    num_tokens = max(length, 2)  # T5 pads the length to avoid degeneracy, then truncates
    num_noise = t5_num_noise_tokens(num_tokens, noise_density)
    num_spans = min(
        t5_num_noise_spans(num_noise, mean_noise_span_length), num_noise, num_tokens - num_noise
    )
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)  # (S,)
    nonnoise_lengths = _random_segmentation(num_tokens - num_noise, num_spans, generator)  # (S,)
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=1).reshape(-1)  # (2S,)
    span_starts = interleaved.cumsum(0)[:-1]  # (2S-1,)
    start_indicator = torch.zeros(num_tokens, dtype=torch.long)  # (L,)
    start_indicator[span_starts] = 1
    is_noise = start_indicator.cumsum(0) % 2 == 1  # (L,)
    return is_noise[:length]


def t5_num_noise_tokens(length: int, noise_density: float) -> int:
    """T5's noise-token count: round(length * density) in float32, clamped to [1, length-1]."""
    rounded = int(torch.round(torch.tensor(float(length)) * torch.tensor(noise_density)))
    return min(max(rounded, 1), length - 1)


def t5_num_noise_spans(num_noise_tokens: int, mean_noise_span_length: float) -> int:
    """T5's span count: round(num_noise_tokens / mean span length) in float32, at least 1."""
    quotient = torch.tensor(float(num_noise_tokens)) / torch.tensor(mean_noise_span_length)
    return max(int(torch.round(quotient)), 1)


def check_noise_args(noise_density: float, mean_noise_span_length: float) -> None:
    """Raise LmlabError unless 0 < noise_density < 1 and mean_noise_span_length > 0."""
    if not 0.0 < noise_density < 1.0:
        raise LmlabError(f"noise density must be in (0, 1), got {noise_density}")
    if not mean_noise_span_length > 0:
        raise LmlabError(f"mean noise span length must be > 0, got {mean_noise_span_length}")


def _random_segmentation(
    num_items: int, num_segments: int, generator: torch.Generator
) -> torch.Tensor:
    """Split ``num_items`` into ``num_segments`` random positive lengths summing to num_items.

    T5's algorithm: shuffle a vector of num_items-1 flags holding num_segments-1 ones, prepend a
    zero, and read segment boundaries off its cumulative sum.
    """
    flags = (torch.arange(num_items - 1) < num_segments - 1).long()  # (N-1,)
    first_in_segment = torch.zeros(num_items, dtype=torch.long)  # (N,)
    first_in_segment[1:] = flags[torch.randperm(num_items - 1, generator=generator)]
    segment_id = first_in_segment.cumsum(0)  # (N,)
    return torch.bincount(segment_id, minlength=num_segments)  # (S,)


def spans_to_sentinels(
    tokens: torch.Tensor, span_mask: torch.Tensor, sentinel_ids: Sequence[int]
) -> torch.Tensor:
    """Replace each run of True in ``span_mask`` by one sentinel (``sentinel_ids[k]`` for run k).

    T5's ``noise_span_to_unique_sentinel``; call it with ``~noise_mask`` for the targets.
    tokens, span_mask: (L,) → (L',).
    """
    previous = torch.cat([span_mask.new_zeros(1), span_mask[:-1]])  # (L,)
    first = span_mask & ~previous  # (L,)
    num_runs = int(first.sum())
    if num_runs > len(sentinel_ids):
        raise LmlabError(f"{num_runs} spans need sentinels but only {len(sentinel_ids)} given")
    replaced = tokens.clone()  # (L,)
    replaced[first] = torch.tensor(list(sentinel_ids[:num_runs]), dtype=torch.long)
    return replaced[~(span_mask & previous)]


def corrupt_spans(
    ids: torch.Tensor,
    generator: torch.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One document's (encoder input, target), both ending in ``eos_id``.

    ids: (L,) → input (L_in,), target (L_out,).
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    noise = random_spans_noise_mask(
        ids.numel(),
        generator,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )  # (L,)
    eos = torch.tensor([eos_id])
    inputs = torch.cat([spans_to_sentinels(ids, noise, sentinel_ids), eos])
    targets = torch.cat([spans_to_sentinels(ids, ~noise, sentinel_ids), eos])
    return inputs, targets


def span_corruption_batch(
    docs: Sequence[torch.Tensor],
    generator: torch.Generator,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    pad_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> LMBatch:
    """Span-corrupt each document and collate an encoder-decoder batch.

    docs: 1-D LongTensors of token ids, without EOS (a (B, L) tensor works too: each row is a
    document, so strip padding first). ``sentinel_ids[k]`` replaces the k-th dropped span (for
    T5, ``<extra_id_k>``). The decoder starts from ``pad_id``, as in T5.
    """
    if len(docs) == 0:
        raise LmlabError("span corruption needs at least one document")
    pairs = [
        corrupt_spans(
            doc,
            generator,
            sentinel_ids=sentinel_ids,
            eos_id=eos_id,
            noise_density=noise_density,
            mean_noise_span_length=mean_noise_span_length,
        )
        for doc in docs
    ]
    return encoder_decoder_batch(
        [p[0] for p in pairs], [p[1] for p in pairs], pad_id=pad_id, decoder_start_id=pad_id
    )


def encoder_decoder_batch(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    pad_id: int,
    decoder_start_id: int,
) -> LMBatch:
    """Collate (input, target) pairs: pad, mask, and shift the targets right for the decoder.

    Returns input_ids (B, T_in) padded with ``pad_id``, labels (B, T_out) padded with
    IGNORE_INDEX, decoder_input_ids (B, T_out) = ``decoder_start_id`` then the target minus its
    last token, and both attention masks.
    """
    start = torch.tensor([decoder_start_id])
    shifted = [torch.cat([start, t[:-1]]) for t in targets]
    input_ids, attention_mask = pad_with_mask(inputs, pad_id)  # (B, T_in)
    labels, decoder_attention_mask = pad_with_mask(targets, IGNORE_INDEX)  # (B, T_out)
    decoder_input_ids, _ = pad_with_mask(shifted, pad_id)  # (B, T_out)
    return LMBatch(
        input_ids=input_ids,
        labels=labels,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
    )


def pad_with_mask(
    seqs: Sequence[torch.Tensor], pad_value: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D LongTensors to (B, T_max) with ``pad_value``; mask True on real tokens."""
    lengths = torch.tensor([len(s) for s in seqs])  # (B,)
    padded = torch.nn.utils.rnn.pad_sequence(
        [s.long() for s in seqs], batch_first=True, padding_value=pad_value
    )  # (B, T_max)
    mask = torch.arange(padded.size(1))[None, :] < lengths[:, None]  # (B, T_max)
    return padded, mask


def reconstruct_from_spans(
    inputs: Sequence[int] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    sentinel_ids: Sequence[int],
    eos_id: int,
) -> list[int]:
    """Undo span corruption: put each target span back in place of its sentinel in the input.

    Reading stops at the first ``eos_id`` of each sequence, so padded rows work. Assumes the
    original document contains neither sentinel ids nor ``eos_id``.
    """
    spans = _spans_by_sentinel(_until_eos(targets, eos_id), set(sentinel_ids))
    restored: list[int] = []
    for token in _until_eos(inputs, eos_id):
        restored.extend(spans.get(token, [token]))
    return restored


def _until_eos(ids: Sequence[int] | torch.Tensor, eos_id: int) -> list[int]:
    """The ids before the first ``eos_id`` (all of them if there is none)."""
    as_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return as_list[: as_list.index(eos_id)] if eos_id in as_list else as_list


def _spans_by_sentinel(targets: list[int], sentinels: set[int]) -> dict[int, list[int]]:
    """Map each sentinel in ``targets`` to the tokens that follow it up to the next sentinel."""
    spans: dict[int, list[int]] = {}
    current: list[int] = []
    for token in targets:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return spans
