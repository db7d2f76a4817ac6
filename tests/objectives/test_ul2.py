"""UL2: denoiser mixing rates, mode tokens, the S-denoiser's 75/25 split and reconstruction."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.errors import LmlabError
from lmlab.objectives.base import IGNORE_INDEX, token_cross_entropy
from lmlab.objectives.span_corruption import reconstruct_from_spans
from lmlab.objectives.ul2 import (
    DEFAULT_DENOISERS,
    DEFAULT_RATES,
    Denoiser,
    sequential_split,
    ul2_batch,
)

PAD, EOS, NLU, NLG, S2S = 0, 1, 2, 3, 4
SENTINELS = list(range(999, 899, -1))
MODES = {"R": NLU, "X": NLG, "S": S2S}


def run(docs, seed, **kwargs):
    return ul2_batch(
        docs,
        torch.Generator().manual_seed(seed),
        sentinel_ids=SENTINELS,
        eos_id=EOS,
        pad_id=PAD,
        nlu_id=NLU,
        nlg_id=NLG,
        s2s_id=S2S,
        **kwargs,
    )


def chi2_critical_999(dof: int) -> float:
    """The 0.999 quantile of chi-square: scipy when installed, else a tabulated value."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return {2: 13.816, 6: 22.458}[dof]
    return float(chi2.ppf(0.999, dof))


def test_default_mixture_is_seven_denoisers_equal_groups():
    assert len(DEFAULT_DENOISERS) == len(DEFAULT_RATES) == 7
    assert abs(sum(DEFAULT_RATES) - 1) < 1e-9
    for group in "RXS":
        share = sum(r for d, r in zip(DEFAULT_DENOISERS, DEFAULT_RATES) if d.group == group)
        assert abs(share - 1 / 3) < 1e-9
    assert {(d.mean_span_length, d.rate) for d in DEFAULT_DENOISERS if d.group == "X"} == {
        (3.0, 0.5), (8.0, 0.5), (64.0, 0.15), (64.0, 0.5)
    }


def test_denoisers_are_drawn_at_the_configured_rates():
    docs = [torch.arange(10, 22)] * 3000
    result = run(docs, seed=0)
    counts = [sum(d == denoiser for d in result.denoisers) for denoiser in DEFAULT_DENOISERS]
    expected = [3000 * r for r in DEFAULT_RATES]
    chi_square = sum((c - e) ** 2 / e for c, e in zip(counts, expected))
    assert chi_square < chi2_critical_999(6)


def test_custom_rates_are_respected():
    denoisers = (Denoiser("R", 3.0, 0.15), Denoiser("X", 8.0, 0.5), Denoiser("S", 1.0, 0.25))
    rates = (0.6, 0.0, 0.4)
    result = run([torch.arange(10, 20)] * 2000, seed=1, denoisers=denoisers, rates=rates)
    groups = [d.group for d in result.denoisers]
    assert "X" not in groups
    chi_square = (groups.count("R") - 1200) ** 2 / 1200 + (groups.count("S") - 800) ** 2 / 800
    assert chi_square < chi2_critical_999(2)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 120), min_size=1, max_size=8), seed=st.integers(0, 2**31)
)
def test_mode_tokens_and_each_example_decodes_back(lengths, seed):
    docs = [torch.arange(10, 10 + n) for n in lengths]
    result = run(docs, seed)
    batch = result.batch
    for row, (doc, denoiser) in enumerate(zip(docs, result.denoisers)):
        inputs = batch.input_ids[row][batch.attention_mask[row]]
        targets = batch.labels[row][batch.decoder_attention_mask[row]]
        assert inputs[0] == MODES[denoiser.group]
        assert inputs[-1] == EOS and targets[-1] == EOS
        if denoiser.group == "S":
            restored = inputs[1:-1].tolist() + targets[:-1].tolist()
        else:
            restored = reconstruct_from_spans(inputs[1:], targets, SENTINELS, EOS)
        assert restored == doc.tolist()


@pytest.mark.parametrize("length, target", [(2, 1), (4, 1), (8, 2), (100, 25), (101, 25), (10, 2)])
def test_s_denoiser_splits_75_25(length, target):
    prefix, suffix = sequential_split(torch.arange(length), 0.25)
    assert suffix.numel() == target and prefix.numel() == length - target
    assert torch.equal(torch.cat([prefix, suffix]), torch.arange(length))


def test_s_denoiser_in_batch():
    only_s = (Denoiser("S", 1.0, 0.25),)
    batch = run([torch.arange(10, 50)], seed=0, denoisers=only_s, rates=(1.0,)).batch
    assert batch.input_ids[0].tolist() == [S2S, *range(10, 40), EOS]
    assert batch.labels[0].tolist() == [*range(40, 50), EOS]
    assert batch.decoder_input_ids[0].tolist() == [PAD, *range(40, 50)]


def test_deterministic_per_seed():
    docs = [torch.arange(10, 10 + n) for n in (50, 80, 30, 64)]
    first, again, other = run(docs, 3), run(docs, 3), run(docs, 4)
    assert first.denoisers == again.denoisers
    assert torch.equal(first.batch.input_ids, again.batch.input_ids)
    assert torch.equal(first.batch.labels, again.batch.labels)
    assert first.denoisers != other.denoisers or not torch.equal(
        first.batch.labels, other.batch.labels
    )


def test_loss_equals_cross_entropy_over_real_targets():
    batch = run([torch.arange(10, 10 + n) for n in (50, 20, 33)], seed=0).batch
    logits = torch.randn(*batch.labels.shape, 1000, generator=torch.Generator().manual_seed(0))
    keep = batch.labels != IGNORE_INDEX
    loss = token_cross_entropy(logits, batch)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], batch.labels[keep]))


@pytest.mark.parametrize(
    "group, mean_span, rate",
    [("Q", 3.0, 0.15), ("R", 0.0, 0.15), ("R", -1.0, 0.15), ("X", 3.0, 1.0), ("S", 1.0, 0.0)],
)
def test_bad_denoisers_raise(group, mean_span, rate):
    with pytest.raises(LmlabError):
        Denoiser(group, mean_span, rate)


@pytest.mark.parametrize(
    "docs, kwargs",
    [
        ([], {}),
        ([torch.tensor([10])], {}),
        ([torch.arange(10, 20)], {"rates": (1.0, 1.0)}),
        ([torch.arange(10, 20)], {"rates": (0.0,) * 7}),
        ([torch.arange(10, 20)], {"rates": (-1.0,) + (1.0,) * 6}),
    ],
)
def test_bad_inputs_raise(docs, kwargs):
    with pytest.raises(LmlabError):
        run(docs, 0, **kwargs)
