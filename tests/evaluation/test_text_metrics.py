"""BLEU, chrF and ROUGE equal sacrebleu and rouge-score called directly on the same outputs."""

import sys

import pytest
from rouge_score import rouge_scorer
from sacrebleu import corpus_bleu, corpus_chrf

from lmlab.errors import LmlabError
from lmlab.evaluation import bleu, chrf, rouge

CASES = {
    "plain": (
        ["the cat sat on the mat", "a quick brown fox jumps"],
        ["the cat is sitting on the mat", "the quick brown fox jumped over"],
    ),
    "empty hypothesis": (["", "hello world"], ["nothing here", "hello world"]),
    "unicode": (["Grüße aus München 🙂", "日本語 の 文"], ["Viele Grüße aus München", "日本語 の 文 です"]),
    "multi-line summaries": (
        ["the cats were running.\nthey stopped at noon.", "rain fell"],
        ["cats ran quickly.\nthey stopped at noon.", "heavy rain fell all day"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bleu_equals_sacrebleu(case):
    hypotheses, references = CASES[case]
    expected = corpus_bleu(hypotheses, [references])
    got = bleu(hypotheses, references)
    assert got["bleu"] == expected.score
    assert [got[f"precision_{n}"] for n in range(1, 5)] == expected.precisions
    assert got["brevity_penalty"] == expected.bp
    assert (got["hyp_len"], got["ref_len"]) == (expected.sys_len, expected.ref_len)


@pytest.mark.parametrize("case", CASES)
def test_chrf_equals_sacrebleu(case):
    hypotheses, references = CASES[case]
    assert chrf(hypotheses, references)["chrf"] == corpus_chrf(hypotheses, [references]).score
    assert chrf(hypotheses, references, word_order=2)["chrf"] == corpus_chrf(hypotheses, [references], word_order=2).score


@pytest.mark.parametrize("case", CASES)
def test_rouge_equals_rouge_score_mean_fmeasure(case):
    hypotheses, references = CASES[case]
    kinds = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    scores = [scorer.score(reference, hypothesis) for hypothesis, reference in zip(hypotheses, references)]
    expected = {kind: sum(s[kind].fmeasure for s in scores) / len(scores) for kind in kinds}
    assert rouge(hypotheses, references) == pytest.approx(expected, abs=1e-12)


def test_several_references_per_hypothesis():
    hypotheses = ["the cat sat on the mat", "hello there"]
    references = [["the cat is on the mat", "a cat sat on a mat"], ["hello world", "hi there"]]
    streams = [[refs[0] for refs in references], [refs[1] for refs in references]]
    assert bleu(hypotheses, references)["bleu"] == corpus_bleu(hypotheses, streams).score
    assert chrf(hypotheses, references)["chrf"] == corpus_chrf(hypotheses, streams).score
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = sum(scorer.score_multi(refs, h)["rouge1"].fmeasure for h, refs in zip(hypotheses, references)) / 2
    assert rouge(hypotheses, references)["rouge1"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("metric", [bleu, chrf, rouge])
@pytest.mark.parametrize(
    "hypotheses, references, message",
    [
        (["a", "b"], ["a"], "2 hypotheses but 1 references"),
        ([], [], "no hypotheses"),
        ("a b", ["a b"], "not one string"),
        (["a"], [[]], "empty list of references"),
        (["a"], [3], "a string or a list of strings"),
        ([None], ["a"], "must be strings"),
    ],
)
def test_bad_inputs_are_one_line_errors(metric, hypotheses, references, message):
    with pytest.raises(LmlabError, match=message) as info:
        metric(hypotheses, references)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "metric, modules", [(bleu, ["sacrebleu"]), (chrf, ["sacrebleu"]), (rouge, ["rouge_score", "rouge_score.rouge_scorer"])]
)
def test_a_missing_library_names_the_extra(monkeypatch, metric, modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(LmlabError, match=r"is not installed; install it with: pip install 'lmlab\[finetune\]'"):
        metric(["a"], ["a"])
