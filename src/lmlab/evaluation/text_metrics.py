"""Text-generation metrics: BLEU and chrF (sacrebleu), ROUGE-1/2/L/Lsum (rouge-score).

Thin wrappers, never re-implementations: each function checks its inputs, calls the library and
returns its numbers in a plain dict, on the library's own scale (sacrebleu: 0–100, rouge-score:
0–1). ``references`` holds one entry per hypothesis: a string, or a list of strings when a
hypothesis has several references. Both libraries are optional (``pip install 'lmlab[finetune]'``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence

from lmlab.errors import LmlabError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
References = Sequence[str] | Sequence[Sequence[str]]


def bleu(hypotheses: Sequence[str], references: References) -> dict[str, float]:
    """Corpus BLEU (sacrebleu's ``corpus_bleu``, default 13a tokenization and exp smoothing).

    Returns ``{"bleu", "precision_1".."precision_4", "brevity_penalty", "hyp_len", "ref_len"}``.
    """
    per_hypothesis = _checked(hypotheses, references)
    score = _library("sacrebleu").corpus_bleu(list(hypotheses), _reference_streams(per_hypothesis))
    precisions = {f"precision_{n}": p for n, p in enumerate(score.precisions, start=1)}
    return {
        "bleu": score.score, **precisions, "brevity_penalty": score.bp,
        "hyp_len": score.sys_len, "ref_len": score.ref_len,
    }


def chrf(hypotheses: Sequence[str], references: References, word_order: int = 0) -> dict[str, float]:
    """Corpus chrF (sacrebleu's ``corpus_chrf``); ``word_order=2`` gives chrF++. Returns ``{"chrf"}``."""
    per_hypothesis = _checked(hypotheses, references)
    score = _library("sacrebleu").corpus_chrf(list(hypotheses), _reference_streams(per_hypothesis), word_order=word_order)
    return {"chrf": score.score}


def rouge(hypotheses: Sequence[str], references: References) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures (rouge-score's ``RougeScorer`` with Porter stemming).

    ROUGE-Lsum treats each line ("\\n"-separated) as a sentence. With several references per
    hypothesis, each hypothesis scores against its best one (rouge-score's ``score_multi``).
    """
    per_hypothesis = _checked(hypotheses, references)
    rouge_scorer = _library("rouge_score.rouge_scorer", extra_name="rouge-score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, refs in zip(hypotheses, per_hypothesis):
        scores = scorer.score_multi(refs, hypothesis)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / len(hypotheses) for kind, total in totals.items()}


def _checked(hypotheses: Sequence[str], references: References) -> list[list[str]]:
    """The references as a list of strings per hypothesis, after checking lengths and types."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise LmlabError("hypotheses and references must be lists of strings, not one string")
    if len(hypotheses) == 0:
        raise LmlabError("no hypotheses to score; pass at least one hypothesis and its reference")
    if len(hypotheses) != len(references):
        raise LmlabError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; pass one reference (or list) per hypothesis"
        )
    per_hypothesis = [[refs] if isinstance(refs, str) else refs for refs in references]
    if not all(isinstance(refs, (list, tuple)) for refs in per_hypothesis):
        raise LmlabError("each reference must be a string or a list of strings")
    if any(len(refs) == 0 for refs in per_hypothesis):
        raise LmlabError("a hypothesis has an empty list of references; give each at least one")
    if not all(isinstance(text, str) for text in [*hypotheses, *(r for refs in per_hypothesis for r in refs)]):
        raise LmlabError("hypotheses and references must be strings")
    return [list(refs) for refs in per_hypothesis]


def _reference_streams(per_hypothesis: list[list[str]]) -> list[list[str]]:
    """sacrebleu's layout: one stream per reference index, each with an entry per hypothesis."""
    if len({len(refs) for refs in per_hypothesis}) != 1:
        raise LmlabError("BLEU and chrF need the same number of references for every hypothesis")
    return [list(stream) for stream in zip(*per_hypothesis)]


def _library(module: str, extra_name: str | None = None) -> ModuleType:
    """Import an optional metric library, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = extra_name or module.split(".")[0]
        raise LmlabError(f"{name} is not installed; install it with: pip install 'lmlab[finetune]'") from None
