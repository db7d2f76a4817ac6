"""Classification metrics from predicted and true class ids: accuracy, macro-F1, per-class
precision and recall, and the confusion matrix.

A class that is never predicted has precision 0, one that never occurs has recall 0 (the
``zero_division=0`` convention of scikit-learn); macro-F1 averages F1 over every class named.
"""

from __future__ import annotations

from typing import Any, Sequence

from lmlab.errors import LmlabError


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """``matrix[t][p]``: how many examples of class ``t`` were predicted as ``p``."""
    if len(true) != len(predicted):
        raise LmlabError(f"got {len(true)} true labels but {len(predicted)} predictions; pass one each")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted):
        matrix[t][p] += 1
    return matrix


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0


def classification_report(
    true: Sequence[int], predicted: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision / recall / F1 / support (by label name) and the
    confusion matrix (rows: true class, columns: predicted class, in ``label_names`` order)."""
    if not true:
        raise LmlabError("no examples to score; pass at least one prediction")
    matrix = confusion_matrix(true, predicted, len(label_names))
    per_class = {}
    for k, name in enumerate(label_names):
        hits = matrix[k][k]
        predicted_k = sum(row[k] for row in matrix)
        support = sum(matrix[k])
        precision, recall = _ratio(hits, predicted_k), _ratio(hits, support)
        per_class[name] = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
                           "support": support}
    correct = sum(matrix[k][k] for k in range(len(label_names)))
    return {
        "accuracy": correct / len(true),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(label_names),
        "per_class": per_class,
        "confusion_matrix": matrix,
        "labels": list(label_names),
    }
