"""Causal LM: labels are the next tokens, IGNORE_INDEX is skipped, the loss is plain cross-entropy."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.objectives import IGNORE_INDEX, LMBatch, causal_lm_batch, token_cross_entropy


def test_labels_are_the_next_tokens():
    windows = torch.tensor([[10, 11, 12, 13, 14], [5, 6, 7, 8, 9]])
    batch = causal_lm_batch(windows)
    assert batch.input_ids.tolist() == [[10, 11, 12, 13], [5, 6, 7, 8]]
    assert batch.labels.tolist() == [[11, 12, 13, 14], [6, 7, 8, 9]]


@settings(max_examples=50, deadline=None)
@given(batch=st.integers(1, 5), length=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_label_at_t_is_input_at_t_plus_one(batch, length, seed):
    windows = torch.randint(0, 1000, (batch, length + 1), generator=torch.Generator().manual_seed(seed))
    result = causal_lm_batch(windows)
    assert result.input_ids.shape == result.labels.shape == (batch, length)
    assert torch.equal(result.labels[:, :-1], result.input_ids[:, 1:])
    assert torch.equal(result.labels[:, -1], windows[:, -1])
    assert torch.equal(result.input_ids[:, 0], windows[:, 0])


def hand_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of -log p(label) over positions whose label is not IGNORE_INDEX, one term at a time."""
    terms = []
    for b in range(labels.size(0)):
        for t in range(labels.size(1)):
            label = int(labels[b, t])
            if label == IGNORE_INDEX:
                continue
            row = logits[b, t].double()
            log_norm = math.log(sum(math.exp(v) for v in row.tolist()))
            terms.append(log_norm - row[label].item())
    return sum(terms) / len(terms)


def test_loss_equals_cross_entropy_by_hand():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen)
    windows = torch.randint(0, 11, (3, 7), generator=gen)
    batch = causal_lm_batch(windows)
    loss = token_cross_entropy(logits, batch)
    assert loss.shape == ()
    assert math.isclose(loss.item(), hand_loss(logits, batch.labels), rel_tol=1e-6)
    reference = F.cross_entropy(logits.reshape(-1, 11), batch.labels.reshape(-1))
    torch.testing.assert_close(loss, reference)


def test_ignored_labels_contribute_nothing():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    labels[0, 1] = labels[1, 3] = labels[1, 4] = IGNORE_INDEX
    batch = LMBatch(input_ids=torch.zeros(2, 5, dtype=torch.long), labels=labels)
    loss = token_cross_entropy(logits, batch)
    assert math.isclose(loss.item(), hand_loss(logits, labels), rel_tol=1e-6)

    # Changing the logits at ignored positions leaves the loss unchanged...
    changed = logits.clone()
    changed[0, 1] += 100 * torch.randn(7, generator=gen)
    changed[1, 3:] = 0.0
    assert torch.equal(token_cross_entropy(changed, batch), loss)
    # ...and the loss is the mean over the kept positions only (not diluted by the ignored ones).
    keep = labels != IGNORE_INDEX
    per_token = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    torch.testing.assert_close(loss, per_token.mean())


def test_gradient_flows_only_to_kept_positions():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    labels = torch.tensor([[1, IGNORE_INDEX, 3, IGNORE_INDEX]])
    token_cross_entropy(logits, LMBatch(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=labels)).backward()
    grad_norms = logits.grad[0].abs().sum(-1)
    assert grad_norms[1] == 0 and grad_norms[3] == 0
    assert grad_norms[0] > 0 and grad_norms[2] > 0
