"""evaluate_lm: token-weighted mean loss, perplexity = exp(loss), next-token accuracy."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmlab.data.windows import sequential_windows, token_tensor
from lmlab.evaluation import evaluate_lm
from lmlab.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=17, n_layer=1, n_head=2, d_model=16, context_length=12, dropout=0.3)
    return build_model(config)


def windows_of_different_sizes():
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randint(0, 17, (4, 13), generator=gen),  # 48 predicted tokens
        torch.randint(0, 17, (1, 13), generator=gen),  # 12
        torch.randint(0, 17, (2, 4), generator=gen),  # 6
    ]


def by_hand(model, windows):
    """Per-token losses and hits, one window row at a time, averaged over all tokens at the end."""
    losses, hits = [], []
    model.eval()
    with torch.no_grad():
        for batch in windows:
            for row in batch:
                inputs, labels = row[:-1], row[1:]
                logits = model(inputs[None])[0].double()  # (T, V)
                log_probs = logits.log_softmax(-1)
                for t, label in enumerate(labels.tolist()):
                    losses.append(-log_probs[t, label].item())
                    hits.append(int(logits[t].argmax()) == label)
    return sum(losses) / len(losses), sum(hits) / len(hits), len(losses)


def test_loss_is_the_token_weighted_mean(model):
    windows = windows_of_different_sizes()
    metrics = evaluate_lm(model, windows)
    loss, accuracy, tokens = by_hand(model, windows)
    assert metrics["tokens"] == tokens == 66
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(accuracy)
    # A mean of per-batch means would weigh the 6 tokens of the last batch like the 48 of the first.
    batch_means = [F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()).item() for w in windows]
    assert sum(batch_means) / 3 != pytest.approx(metrics["loss"], rel=1e-5)


def test_perplexity_is_exp_loss(model):
    metrics = evaluate_lm(model, windows_of_different_sizes())
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)
    assert 1 < metrics["perplexity"] < 100


class Oracle(nn.Module):
    """Puts all its mass on a fixed guess: the next id is (current id + 1) mod V."""

    def __init__(self, vocab: int, confidence: float):
        super().__init__()
        self.vocab, self.confidence = vocab, confidence
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits.scatter_(-1, ((ids + 1) % self.vocab)[..., None], self.confidence)
        return logits


def test_accuracy_and_loss_of_a_known_predictor():
    V = 10
    tokens = token_tensor([0, 1, 2, 3, 5, 6, 7, 9, 0, 1, 2])  # 10 transitions, 8 are "+1 mod 10"
    metrics = evaluate_lm(Oracle(V, 5.0), sequential_windows(tokens, 2, 4))
    assert metrics["tokens"] == 10
    assert metrics["accuracy"] == pytest.approx(0.8)
    right = -math.log(math.exp(5) / (math.exp(5) + V - 1))
    wrong = -math.log(1 / (math.exp(5) + V - 1))
    assert metrics["loss"] == pytest.approx((8 * right + 2 * wrong) / 10)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))


def test_uniform_model_has_perplexity_vocab_size():
    metrics = evaluate_lm(Oracle(13, 0.0), [torch.randint(0, 13, (3, 9))])
    assert metrics["loss"] == pytest.approx(math.log(13))
    assert metrics["perplexity"] == pytest.approx(13)


def test_restores_training_mode_and_ignores_dropout(model):
    windows = windows_of_different_sizes()
    model.train()
    first = evaluate_lm(model, windows)
    assert model.training
    assert evaluate_lm(model, windows) == first  # evaluation runs without dropout
    model.eval()
    evaluate_lm(model, windows)
    assert not model.training


def test_no_windows():
    metrics = evaluate_lm(Oracle(5, 1.0), [])
    assert metrics["tokens"] == 0 and math.isnan(metrics["loss"])
