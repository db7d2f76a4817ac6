"""T5 span corruption: T5's formulas, an independent numpy reference, and exact reconstruction."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, token_cross_entropy
from lmlab.objectives.span_corruption import (
    corrupt_spans,
    random_spans_noise_mask,
    reconstruct_from_spans,
    span_corruption_batch,
)

EOS, PAD = 1, 0
SENTINELS = list(range(1099, 999, -1))  # <extra_id_0> = 1099, counting down like T5
VOCAB = 1100


def t5_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """T5's (num_noise_tokens, num_noise_spans), in float32 as TensorFlow computes them."""
    length = max(length, 2)
    noise = int(np.round(np.float32(length) * np.float32(density)))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(np.round(np.float32(noise) / np.float32(mean_span))), 1)
    return noise, spans


def numpy_t5_mask(length: int, density: float, mean_span: float, rng: np.random.Generator):
    """A straight numpy port of T5's random_spans_noise_mask, independent of lmlab."""
    orig_length, length = length, max(length, 2)
    num_noise, num_spans = t5_counts(length, density, mean_span)

    def segmentation(num_items: int, num_segments: int) -> np.ndarray:
        flags = (np.arange(num_items - 1) < num_segments - 1).astype(np.int64)
        rng.shuffle(flags)
        segment_id = np.cumsum(np.pad(flags, [[1, 0]]))
        return np.bincount(segment_id, minlength=num_segments)

    noise_lengths = segmentation(num_noise, num_spans)
    nonnoise_lengths = segmentation(length - num_noise, num_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    indicator = np.zeros(length, dtype=np.int64)
    indicator[np.cumsum(interleaved)[:-1]] = 1
    return (np.cumsum(indicator) % 2 == 1)[:orig_length]


def runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


def feasible(length: int, density: float, mean_span: float) -> bool:
    """Whether T5 itself can build the mask (no more spans than noise or non-noise tokens)."""
    noise, spans = t5_counts(length, density, mean_span)
    return spans <= min(noise, max(length, 2) - noise)


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 300),
    density=st.floats(0.05, 0.9),
    mean_span=st.floats(1.0, 64.0),
    seed=st.integers(0, 2**31),
)
def test_mask_matches_t5_formulas_and_reference(length, density, mean_span, seed):
    assume(feasible(length, density, mean_span))
    mask = random_spans_noise_mask(
        length,
        torch.Generator().manual_seed(seed),
        noise_density=density,
        mean_noise_span_length=mean_span,
    ).numpy()
    reference = numpy_t5_mask(length, density, mean_span, np.random.default_rng(seed))
    assert mask.shape == reference.shape == (length,)
    assert not mask[0]
    if length >= 2:
        noise, spans = t5_counts(length, density, mean_span)
        assert mask.sum() == reference.sum() == noise
        assert len(runs(mask)) == len(runs(reference)) == spans
        assert mask[-1] and reference[-1]  # T5 interleaves non-noise first, so noise ends it


@pytest.mark.parametrize(
    "length, noise, spans",
    [(1, 1, 1), (2, 1, 1), (10, 2, 1), (20, 3, 1), (100, 15, 5), (512, 77, 26)],
)
def test_known_t5_counts(length, noise, spans):
    assert t5_counts(length, 0.15, 3.0) == (noise, spans)
    mask = random_spans_noise_mask(length, torch.Generator().manual_seed(0))
    if length >= 2:
        assert int(mask.sum()) == noise and len(runs(mask.numpy())) == spans


def test_mask_distribution_matches_numpy_reference():
    length, density, mean_span, draws = 40, 0.3, 3.0, 2000
    generator, rng = torch.Generator().manual_seed(1), np.random.default_rng(1)
    ours = np.stack(
        [
            random_spans_noise_mask(
                length, generator, noise_density=density, mean_noise_span_length=mean_span
            ).numpy()
            for _ in range(draws)
        ]
    )
    ref = np.stack([numpy_t5_mask(length, density, mean_span, rng) for _ in range(draws)])
    # per-position noise frequency: each is a mean of 2000 Bernoullis, sd <= 0.011
    assert np.abs(ours.mean(0) - ref.mean(0)).max() < 0.06
    ours_hist = np.bincount(sum((runs(m) for m in ours), []), minlength=13)[:13] / draws
    ref_hist = np.bincount(sum((runs(m) for m in ref), []), minlength=13)[:13] / draws
    assert np.abs(ours_hist - ref_hist).sum() < 0.15


@settings(max_examples=60, deadline=None)
@given(
    doc=st.lists(st.integers(2, 999), min_size=1, max_size=200),
    density=st.sampled_from([0.15, 0.3, 0.5]),
    mean_span=st.sampled_from([1.0, 3.0, 8.0, 64.0]),
    seed=st.integers(0, 2**31),
)
def test_reconstruction_is_exact(doc, density, mean_span, seed):
    inputs, targets = corrupt_spans(
        torch.tensor(doc),
        torch.Generator().manual_seed(seed),
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        noise_density=density,
        mean_noise_span_length=mean_span,
    )
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert reconstruct_from_spans(inputs, targets, SENTINELS, EOS) == doc
    in_sentinels = [t for t in inputs.tolist() if t in SENTINELS]
    out_sentinels = [t for t in targets.tolist() if t in SENTINELS]
    assert in_sentinels == SENTINELS[: len(in_sentinels)]
    assert out_sentinels == SENTINELS[: len(out_sentinels)]
    if len(doc) >= 2:  # T5's number of spans, lowered only where T5 itself would fail
        noise, spans = t5_counts(len(doc), density, mean_span)
        assert len(in_sentinels) == len(out_sentinels) == min(spans, noise, len(doc) - noise)
    else:  # T5 truncates its length-2 mask to [non-noise]: target is sentinel0 then EOS
        assert (in_sentinels, out_sentinels) == ([], SENTINELS[:1])


def test_target_layout_follows_t5():
    """Targets are sentinel0 span0 sentinel1 span1 ... EOS; inputs keep the non-noise tokens."""
    doc = torch.arange(10, 60)
    generator = torch.Generator().manual_seed(3)
    mask = random_spans_noise_mask(50, generator)
    inputs, targets = corrupt_spans(
        doc, torch.Generator().manual_seed(3), sentinel_ids=SENTINELS, eos_id=EOS
    )
    noise_tokens = [t for t in targets.tolist() if t not in SENTINELS][:-1]
    assert noise_tokens == doc[mask].tolist()
    assert [t for t in inputs.tolist() if t not in SENTINELS][:-1] == doc[~mask].tolist()
    assert targets[0] == SENTINELS[0]


def make_batch(seed: int):
    docs = [torch.arange(10, 10 + n) for n in (30, 7, 55)]
    return docs, span_corruption_batch(
        docs, torch.Generator().manual_seed(seed), sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD
    )


def test_batch_collation():
    docs, batch = make_batch(0)
    for row, doc in enumerate(docs):
        restored = reconstruct_from_spans(batch.input_ids[row], batch.labels[row], SENTINELS, EOS)
        assert restored == doc.tolist()
    assert torch.equal(batch.attention_mask, batch.input_ids != PAD)
    assert torch.equal(batch.decoder_attention_mask, batch.labels != IGNORE_INDEX)
    assert (batch.decoder_input_ids[:, 0] == PAD).all()
    real = batch.decoder_attention_mask[:, 1:]
    assert torch.equal(batch.decoder_input_ids[:, 1:][real], batch.labels[:, :-1][real])
    assert (batch.decoder_input_ids[~batch.decoder_attention_mask] == PAD).all()


def test_same_seed_same_batch_different_seed_different():
    _, first = make_batch(5)
    _, again = make_batch(5)
    _, other = make_batch(6)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels) or not torch.equal(
        first.input_ids, other.input_ids
    )


def test_loss_equals_cross_entropy_over_real_targets():
    _, batch = make_batch(0)
    logits = torch.randn(*batch.labels.shape, VOCAB, generator=torch.Generator().manual_seed(0))
    keep = batch.labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], batch.labels[keep])
    loss = token_cross_entropy(logits, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_density": 0.0},
        {"noise_density": 1.0},
        {"noise_density": 1.5},
        {"mean_noise_span_length": 0.0},
        {"mean_noise_span_length": -2.0},
    ],
)
def test_bad_noise_arguments_raise(kwargs):
    with pytest.raises(LmlabError):
        random_spans_noise_mask(20, torch.Generator(), **kwargs)


def test_empty_inputs_and_too_few_sentinels_raise():
    generator = torch.Generator()
    with pytest.raises(LmlabError):
        random_spans_noise_mask(0, generator)
    with pytest.raises(LmlabError):
        span_corruption_batch([], generator, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD)
    with pytest.raises(LmlabError):
        corrupt_spans(torch.arange(10, 400), generator, sentinel_ids=SENTINELS[:3], eos_id=EOS)
