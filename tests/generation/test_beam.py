"""Beam search's selection step: the per-beam shortlist finds exactly the global best continuations,
with the native one-pass kernel and with PyTorch (when processors adjust the log-probabilities)."""

import pytest
import torch

from lmlab.generation.beam import best_continuations


@pytest.mark.parametrize("B, nb, V, keep", [(1, 4, 50, 8), (3, 2, 7, 4), (2, 5, 3, 10), (1, 1, 20, 2), (2, 4, 5000, 8)])
@pytest.mark.parametrize("adjust", [None, lambda logp: logp], ids=["no-processors", "processors"])
def test_best_continuations_equal_a_top_k_over_all_beams(B, nb, V, keep, adjust):
    g = torch.Generator().manual_seed(V + keep)
    logits, running = torch.randn(B * nb, V, generator=g) * 3, torch.randn(B, nb, generator=g)
    total = (logits.double().log_softmax(-1).view(B, nb, V) + running[:, :, None].double()).view(B, nb * V)
    scores, index = best_continuations(logits, running, keep, adjust)
    want_scores, want_index = torch.topk(total, min(keep, nb * min(keep, V)))
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-6, atol=1e-6)
    assert torch.equal(index.sort(dim=1).values, want_index.sort(dim=1).values)
    torch.testing.assert_close(total.gather(1, index), scores.double(), rtol=1e-6, atol=1e-6)


def test_processors_see_the_log_probabilities():
    logits, running = torch.randn(2, 10), torch.zeros(1, 2)
    banned = lambda logp: logp.index_fill(1, torch.tensor([int(logits[0].argmax())]), float("-inf"))
    _, index = best_continuations(logits, running, 2, banned)
    assert int(logits[0].argmax()) not in index.tolist()[0]
