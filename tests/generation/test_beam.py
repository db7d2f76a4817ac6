"""Beam search's selection step: the per-beam shortlist finds exactly the global best continuations."""

import pytest
import torch

from lmlab.generation.beam import best_continuations


@pytest.mark.parametrize("B, nb, V, keep", [(1, 4, 50, 8), (3, 2, 7, 4), (2, 5, 3, 10), (1, 1, 20, 2)])
def test_best_continuations_equal_a_top_k_over_all_beams(B, nb, V, keep):
    total = torch.randn(B, nb, V, generator=torch.Generator().manual_seed(V + keep))
    scores, index = best_continuations(total, keep)
    want_scores, want_index = torch.topk(total.view(B, nb * V), keep)
    torch.testing.assert_close(scores, want_scores)
    assert torch.equal(index.sort(dim=1).values, want_index.sort(dim=1).values)
    assert torch.equal(total.view(B, -1).gather(1, index), scores)
