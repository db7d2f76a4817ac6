"""Metrics: perplexity and accuracy of language models (BLEU/ROUGE and task metrics to come)."""

from lmlab.evaluation.perplexity import evaluate_lm

__all__ = ["evaluate_lm"]
