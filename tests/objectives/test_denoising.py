"""BART denoising: Poisson span lengths, infilling, masking/deletion, permutation, rotation."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, token_cross_entropy
from lmlab.objectives.denoising import (
    DenoisingConfig,
    bart_noise,
    delete_tokens,
    denoising_batch,
    infill_spans,
    mask_tokens,
    permute_sentences,
    rotate_document,
    sample_span_lengths,
)

PAD, BOS, EOS, MASK, STOP = 0, 1, 2, 3, 4
FIRST_WORD = 5


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_critical_999(dof: int) -> float:
    """The 0.999 quantile of chi-square: scipy when installed, else a tabulated value."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return {5: 20.515, 10: 29.588}[dof]
    return float(chi2.ppf(0.999, dof))


def test_span_lengths_follow_poisson_3():
    lengths = sample_span_lengths(20000, 3.0, generator(0))
    observed = torch.bincount(lengths, minlength=11).tolist()
    observed = observed[:10] + [sum(observed[10:])]  # bins 0..9 and >= 10
    pmf = [math.exp(-3.0) * 3.0**k / math.factorial(k) for k in range(10)]
    expected = [20000 * p for p in pmf] + [20000 * (1 - sum(pmf))]
    chi_square = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    assert chi_square < chi2_critical_999(10)
    assert abs(lengths.double().mean().item() - 3.0) < 0.1


def check_infilled(original: list[int], noised: list[int]) -> int:
    """Assert ``noised`` is ``original`` with spans replaced by masks; return tokens removed."""
    kept = [t for t in noised if t != MASK]
    assert kept == sorted(kept) and set(kept) <= set(original)  # an in-order subsequence
    previous, masks_since = FIRST_WORD - 1, 0
    for token in noised + [original[-1] + 1]:
        if token == MASK:
            masks_since += 1
            continue
        if token - previous > 1:  # a gap in the original must have been replaced by a mask
            assert masks_since >= 1
        previous, masks_since = token, 0
    return len(original) - len(kept)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 300), ratio=st.floats(0.05, 0.9), seed=st.integers(0, 2**31))
def test_infilling_replaces_spans_by_single_masks(length, ratio, seed):
    original = list(range(FIRST_WORD, FIRST_WORD + length))
    noised = infill_spans(torch.tensor(original), ratio, MASK, generator(seed)).tolist()
    removed = check_infilled(original, noised)
    assert removed <= math.ceil(length * ratio)


def test_infilling_removes_about_30_percent():
    original = list(range(FIRST_WORD, FIRST_WORD + 2000))
    noised = [infill_spans(torch.tensor(original), 0.3, MASK, generator(s)) for s in range(10)]
    removed = [check_infilled(original, n.tolist()) for n in noised]
    # overlapping spans merge, so slightly less than the 600-token budget goes
    assert all(450 <= r <= 600 for r in removed)


def test_masking_and_deletion_rates():
    ids = torch.arange(FIRST_WORD, FIRST_WORD + 20000)
    masked = mask_tokens(ids, 0.2, MASK, generator(1))
    n_masked = int((masked == MASK).sum())
    assert abs(n_masked - 4000) < 5 * math.sqrt(20000 * 0.2 * 0.8)
    assert torch.equal(masked[masked != MASK], ids[masked != MASK])
    kept = delete_tokens(ids, 0.3, generator(2))
    assert abs((20000 - kept.numel()) - 6000) < 5 * math.sqrt(20000 * 0.3 * 0.7)
    assert (kept[1:] > kept[:-1]).all()  # order is preserved


def split_sentences(ids: list[int]) -> list[tuple[int, ...]]:
    sentences, current = [], []
    for token in ids:
        current.append(token)
        if token == STOP:
            sentences.append(tuple(current))
            current = []
    return sentences + ([tuple(current)] if current else [])


@settings(max_examples=60, deadline=None)
@given(doc=st.lists(st.integers(STOP, 12), max_size=80), seed=st.integers(0, 2**31))
def test_sentence_permutation_preserves_the_sentences(doc, seed):
    doc = doc + [STOP]
    permuted = permute_sentences(torch.tensor(doc), [STOP], generator(seed)).tolist()
    assert sorted(split_sentences(permuted)) == sorted(split_sentences(doc))


def test_unterminated_last_sentence_moves_as_a_whole():
    doc = torch.tensor([5, STOP, 6, 7])
    outcomes = {tuple(permute_sentences(doc, [STOP], generator(s)).tolist()) for s in range(40)}
    assert outcomes == {(5, STOP, 6, 7), (6, 7, 5, STOP)}


def test_sentence_permutation_shuffles_uniformly():
    doc = torch.tensor([5, STOP, 6, STOP, 7, STOP])
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(1200):
        key = tuple(permute_sentences(doc, [STOP], generator(seed)).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6
    chi_square = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi_square < chi2_critical_999(5)


@settings(max_examples=60, deadline=None)
@given(doc=st.lists(st.integers(5, 99), min_size=1, max_size=60), seed=st.integers(0, 2**31))
def test_rotation_is_a_rotation(doc, seed):
    rotated = rotate_document(torch.tensor(doc), generator(seed)).tolist()
    assert any(doc[k:] + doc[:k] == rotated for k in range(len(doc)))


def test_rotation_start_is_uniform():
    doc = torch.arange(FIRST_WORD, FIRST_WORD + 6)
    firsts = [int(rotate_document(doc, generator(s))[0]) for s in range(1200)]
    counts = torch.bincount(torch.tensor(firsts) - FIRST_WORD, minlength=6).tolist()
    assert sum((c - 200) ** 2 / 200 for c in counts) < chi2_critical_999(5)


def make_docs() -> list[torch.Tensor]:
    return [
        torch.tensor([10, 11, 12, STOP, 13, 14, STOP, 15, 16, 17, 18, STOP] * 3),
        torch.tensor([20, 21, STOP, 22, 23, 24, STOP]),
    ]


def make_batch(seed: int, config: DenoisingConfig = DenoisingConfig()):
    return denoising_batch(
        make_docs(),
        generator(seed),
        mask_id=MASK,
        pad_id=PAD,
        config=config,
        sentence_end_ids=[STOP],
        bos_id=BOS,
        eos_id=EOS,
    )


def test_batch_layout_follows_bart():
    batch = make_batch(0)
    for row, doc in enumerate(make_docs()):
        real = batch.decoder_attention_mask[row]
        assert batch.labels[row][real].tolist() == [BOS, *doc.tolist(), EOS]
        assert batch.decoder_input_ids[row][real].tolist() == [EOS, BOS, *doc.tolist()]
        source = batch.input_ids[row][batch.attention_mask[row]].tolist()
        assert source[0] == BOS and source[-1] == EOS
    assert (batch.labels[~batch.decoder_attention_mask] == IGNORE_INDEX).all()
    assert (batch.input_ids[~batch.attention_mask] == PAD).all()


def test_default_config_is_infilling_plus_permutation():
    config = DenoisingConfig()
    assert (config.infill_ratio, config.poisson_lambda) == (0.3, 3.0)
    assert config.permute_sentences
    assert config.token_mask_prob == config.token_delete_prob == 0 and not config.rotate_document


def test_combined_noise_keeps_only_document_tokens_and_masks():
    config = DenoisingConfig(token_mask_prob=0.1, token_delete_prob=0.1, rotate_document=True)
    doc = make_docs()[0]
    noised = bart_noise(doc, generator(3), config=config, mask_id=MASK, sentence_end_ids=[STOP])
    assert set(noised.tolist()) <= set(doc.tolist()) | {MASK}


def test_deterministic_per_seed():
    first, again, other = make_batch(7), make_batch(7), make_batch(8)
    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.labels, again.labels)
    assert first.input_ids.shape != other.input_ids.shape or not torch.equal(
        first.input_ids, other.input_ids
    )


def test_loss_equals_cross_entropy_over_real_targets():
    batch = make_batch(0)
    logits = torch.randn(*batch.labels.shape, 30, generator=generator(0))
    keep = batch.labels != IGNORE_INDEX
    loss = token_cross_entropy(logits, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], batch.labels[keep]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"infill_ratio": 1.0},
        {"infill_ratio": -0.1},
        {"token_mask_prob": 1.5},
        {"token_delete_prob": -1.0},
        {"poisson_lambda": 0.0},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(LmlabError):
        DenoisingConfig(**kwargs)


def test_bad_inputs_raise():
    arguments = {"mask_id": MASK, "pad_id": PAD, "sentence_end_ids": [STOP], "eos_id": EOS}
    with pytest.raises(LmlabError):
        denoising_batch([], generator(0), **arguments)
    with pytest.raises(LmlabError):
        denoising_batch([torch.tensor([], dtype=torch.long)], generator(0), **arguments)
    with pytest.raises(LmlabError):  # permutation without sentence ends
        denoising_batch(make_docs(), generator(0), mask_id=MASK, pad_id=PAD, eos_id=EOS)
    with pytest.raises(LmlabError):  # no way to start the decoder
        denoising_batch(
            make_docs(), generator(0), mask_id=MASK, pad_id=PAD, sentence_end_ids=[STOP]
        )
