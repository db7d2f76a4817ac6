"""Metrics: loss, perplexity and accuracy of language models on any objective's labels."""

from lmlab.evaluation.perplexity import decoder_forward, evaluate_batches, evaluate_lm

__all__ = ["decoder_forward", "evaluate_batches", "evaluate_lm"]
