"""Gumbel-max sampling draws from exactly the processed distribution the pipeline describes."""

import pytest
import torch
from scipy.stats import chisquare

from lmlab.generation.processors import LogitsPipeline


@pytest.mark.parametrize("settings", [
    dict(),
    dict(temperature=0.7),
    dict(top_k=5),
    dict(top_p=0.8, temperature=1.3),
    dict(top_k=6, top_p=0.9, min_p=0.05),
])
def test_sample_frequencies_match_the_processed_distribution(settings):
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 1.5
    pipeline = LogitsPipeline.build(sampling=True, prompt_len=0, eos_ids=[], **settings)
    ids = torch.zeros(1, 0, dtype=torch.long)
    probs = pipeline(ids, logits.clone()).softmax(dim=-1)[0].double()  # the mask form of the same warpers
    n = 40_000
    generator = torch.Generator().manual_seed(0)
    draws = pipeline.pick(ids.expand(n, 0), logits.expand(n, -1), torch.rand(n, 12, generator=generator))
    counts = torch.bincount(draws, minlength=12).double()
    assert counts[probs == 0].sum() == 0  # filtered tokens never come up
    kept = probs > 0
    expected = probs[kept] / probs[kept].sum() * n
    assert chisquare(counts[kept].numpy(), expected.numpy()).pvalue > 1e-3


def test_the_same_numbers_pick_the_same_token_from_close_distributions():
    pipeline = LogitsPipeline.build(sampling=True, prompt_len=0, eos_ids=[], top_k=20, temperature=0.8)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2000, 100, generator=g)
    nudged = logits + 1e-3 * torch.randn(2000, 100, generator=g)
    uniform = torch.rand(2000, 100, generator=g)
    ids = torch.zeros(2000, 0, dtype=torch.long)
    same = (pipeline.pick(ids, logits, uniform) == pipeline.pick(ids, nudged, uniform)).double().mean()
    assert same > 0.99
