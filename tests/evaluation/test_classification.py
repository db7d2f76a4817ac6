"""Classification metrics against scikit-learn (when installed) and hand-computed cases."""

import random

import pytest

from lmlab.errors import LmlabError
from lmlab.evaluation.classification import classification_report, confusion_matrix


def test_hand_computed_case():
    true = [0, 0, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0]
    report = classification_report(true, predicted, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_equals_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    true = [rng.randrange(4) for _ in range(200)]
    predicted = [t if rng.random() < 0.6 else rng.randrange(4) for t in true]
    report = classification_report(true, predicted, ["w", "x", "y", "z"])
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(true, predicted))
    assert report["macro_f1"] == pytest.approx(metrics.f1_score(true, predicted, average="macro"))
    precision = metrics.precision_score(true, predicted, average=None, zero_division=0)
    recall = metrics.recall_score(true, predicted, average=None, zero_division=0)
    for k, name in enumerate("wxyz"):
        assert report["per_class"][name]["precision"] == pytest.approx(precision[k])
        assert report["per_class"][name]["recall"] == pytest.approx(recall[k])
    assert report["confusion_matrix"] == metrics.confusion_matrix(true, predicted, labels=[0, 1, 2, 3]).tolist()


def test_mismatched_lengths_are_an_error():
    with pytest.raises(LmlabError, match="2 true labels but 1"):
        confusion_matrix([0, 1], [0], 2)
