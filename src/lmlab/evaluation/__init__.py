"""Metrics: loss, perplexity and accuracy of language models on any objective's labels; BLEU,
chrF and ROUGE of generated text (thin wrappers over sacrebleu and rouge-score)."""

from lmlab.evaluation.perplexity import decoder_forward, evaluate_batches, evaluate_lm
from lmlab.evaluation.text_metrics import bleu, chrf, rouge

__all__ = ["bleu", "chrf", "decoder_forward", "evaluate_batches", "evaluate_lm", "rouge"]
