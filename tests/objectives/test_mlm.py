"""BERT MLM: masking rates, the 80/10/10 split, protected tokens and whole-word masking."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, token_cross_entropy
from lmlab.objectives.mlm import mlm_batch

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = (PAD, CLS, SEP, MASK)
VOCAB = 50


def sentences(batch: int, length: int, seed: int) -> torch.Tensor:
    """(B, T) rows of [CLS] tokens [SEP] followed by padding of random length."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=generator)
    ends = torch.randint(3, length + 1, (batch,), generator=generator)
    positions = torch.arange(length)
    ids[:, 0] = CLS
    ids[positions[None, :] == ends[:, None] - 1] = SEP
    return ids.masked_fill(positions[None, :] >= ends[:, None], PAD)


def run(ids: torch.Tensor, seed: int, **kwargs):
    return mlm_batch(
        ids,
        torch.Generator().manual_seed(seed),
        mask_id=MASK,
        pad_id=PAD,
        vocab_size=VOCAB,
        special_ids=SPECIALS,
        **kwargs,
    )


def within_sigmas(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether ``count`` successes in ``trials`` is within ``sigmas`` binomial sds of p."""
    return abs(count - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def test_mask_rate_and_80_10_10_split():
    ids = sentences(256, 128, seed=0)
    batch = run(ids, seed=1)
    maskable = (ids != PAD) & (ids != CLS) & (ids != SEP)
    chosen = batch.labels != IGNORE_INDEX
    assert within_sigmas(int(chosen.sum()), int(maskable.sum()), 0.15)
    n_chosen = int(chosen.sum())
    to_mask = int((batch.input_ids[chosen] == MASK).sum())
    unchanged = int((batch.input_ids[chosen] == ids[chosen]).sum())
    assert within_sigmas(to_mask, n_chosen, 0.8)
    # a random replacement equals the original 1/46 of the time; count those as "unchanged"
    p_same = 0.1 + 0.1 / (VOCAB - len(SPECIALS))
    assert within_sigmas(unchanged, n_chosen, p_same)
    randomised = batch.input_ids[chosen & (batch.input_ids != MASK) & (batch.input_ids != ids)]
    assert randomised.numel() > 0 and (randomised >= len(SPECIALS)).all()
    assert (randomised < VOCAB).all()
    assert torch.equal(batch.labels[chosen], ids[chosen])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 6), length=st.integers(3, 40))
def test_special_and_padding_never_chosen(seed, batch, length):
    ids = sentences(batch, length, seed)
    result = run(ids, seed + 1, mask_prob=0.9)
    protected = (ids == PAD) | (ids == CLS) | (ids == SEP)
    assert (result.labels[protected] == IGNORE_INDEX).all()
    assert torch.equal(result.input_ids[protected], ids[protected])
    assert torch.equal(result.attention_mask, ids != PAD)
    unchosen = result.labels == IGNORE_INDEX
    assert torch.equal(result.input_ids[unchosen], ids[unchosen])


def word_starts(ids: torch.Tensor) -> torch.Tensor:
    """A toy WordPiece rule: ids divisible by 3 are continuation pieces ("##...")."""
    return ids % 3 != 0


def words(row: torch.Tensor, starts: torch.Tensor) -> list[list[int]]:
    """Position lists of the words in one row (special/pad tokens excluded)."""
    groups: list[list[int]] = []
    for position, (token, start) in enumerate(zip(row.tolist(), starts.tolist())):
        if token in SPECIALS:
            groups.append([])
        elif start or not groups or not groups[-1]:
            groups.append([position])
        else:
            groups[-1].append(position)
    return [g for g in groups if g]


@pytest.mark.parametrize("as_callable", [False, True])
def test_whole_word_masking_masks_whole_words(as_callable):
    ids = sentences(64, 48, seed=2)
    starts = word_starts(ids)
    rule = (lambda token: token % 3 != 0) if as_callable else starts
    batch = run(ids, seed=3, word_start=rule)
    chosen = batch.labels != IGNORE_INDEX
    n_words = n_chosen_words = 0
    for row in range(ids.size(0)):
        for word in words(ids[row], starts[row]):
            flags = chosen[row, word]
            assert flags.all() or not flags.any()
            n_words += 1
            n_chosen_words += int(flags.all())
    assert within_sigmas(n_chosen_words, n_words, 0.15)


def test_list_input_is_padded():
    rows = [torch.tensor([CLS, 10, 11, SEP]), torch.tensor([CLS, 12, SEP])]
    batch = run(rows, seed=0)
    assert batch.input_ids.shape == (2, 4)
    assert batch.attention_mask.tolist() == [[True] * 4, [True, True, True, False]]


def test_deterministic_per_seed():
    ids = sentences(8, 64, seed=4)
    first, again, other = run(ids, 7), run(ids, 7), run(ids, 8)
    assert torch.equal(first.input_ids, again.input_ids)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


def test_loss_equals_cross_entropy_at_masked_positions():
    batch = run(sentences(4, 32, seed=5), seed=6)
    logits = torch.randn(4, 32, VOCAB, generator=torch.Generator().manual_seed(0))
    keep = batch.labels != IGNORE_INDEX
    loss = token_cross_entropy(logits, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], batch.labels[keep]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask_prob": 0.0},
        {"mask_prob": 1.0},
        {"mask_token_rate": 0.95, "random_token_rate": 0.1},
        {"random_token_rate": -0.1},
        {"vocab_size": 4},
    ],
)
def test_bad_arguments_raise(kwargs):
    arguments = {"mask_id": MASK, "pad_id": PAD, "vocab_size": VOCAB, "special_ids": SPECIALS}
    with pytest.raises(LmlabError):
        mlm_batch(sentences(2, 8, 0), torch.Generator(), **{**arguments, **kwargs})


def test_empty_input_raises():
    with pytest.raises(LmlabError):
        run(torch.zeros(0, 5, dtype=torch.long), seed=0)
    with pytest.raises(LmlabError):
        run([], seed=0)
    with pytest.raises(LmlabError):
        run(sentences(2, 8, 0), seed=0, word_start=torch.ones(3, 8, dtype=torch.bool))
