"""The translation recipe end to end on a tiny English→Spanish number-word language: every arm and
metric reported, BLEU and chrF equal to sacrebleu's on the reported translations, the decoding
loop equal to greedy decoding, both models learning to write the target language; bad data."""

from __future__ import annotations

import json
import random

import pytest

from lmlab.errors import LmlabError
from lmlab.recipes import run_recipe

sacrebleu = pytest.importorskip("sacrebleu")

EN = "zero one two three four five six seven eight nine".split()
ES = "cero uno dos tres cuatro cinco seis siete ocho nueve".split()
ARMS = ("gru", "transformer")
DECODINGS = ("greedy", "beam4")
ARM_SECONDS = 8
QUIET = {"echo": lambda _: None}


def number_pairs(count: int, seed: int) -> list[str]:
    """TSV lines "three one<TAB>tres uno": one to four number words, translated word for word."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = [rng.randrange(len(EN)) for _ in range(rng.randint(1, 4))]
        lines.append(" ".join(EN[w] for w in words) + "\t" + " ".join(ES[w] for w in words))
    return lines


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translation")
    data = folder / "pairs.tsv"
    data.write_text("\n".join(number_pairs(300, seed=0)) + "\n", encoding="utf-8")
    report = run_recipe("translation", folder / "out", budget="small", max_time=ARM_SECONDS, data=data, **QUIET)
    return report, json.loads((folder / "out" / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_results_hold_every_arm_and_metric(finished):
    report, results = finished
    for arm in ARMS:
        assert results["arms"][arm]["steps"] > 0
        for decoding in DECODINGS:
            assert set(results["arms"][arm][decoding]) == {"bleu", "chrf"}
            assert len(results["hypotheses"][arm][decoding]) == len(results["references"]) > 0
    text = report.read_text(encoding="utf-8")
    assert "| gru |" in text and "| transformer |" in text
    assert "Sample translations" in text and "step by step (transformer)" in text
    assert "lmlab finetune" in text and "--task seq2seq" in text
    assert (report.parent / "curves.png").read_bytes().startswith(b"\x89PNG") and "](curves.png)" in text


@pytest.mark.slow
def test_bleu_and_chrf_are_sacrebleus_on_the_reported_translations(finished):
    _, results = finished
    references = results["references"]
    for arm in ARMS:
        for decoding in DECODINGS:
            hypotheses = results["hypotheses"][arm][decoding]
            scores = results["arms"][arm][decoding]
            assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
            assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)


@pytest.mark.slow
def test_the_decoding_loop_is_greedy_decoding_step_by_step(finished):
    _, results = finished
    for arm in ARMS:
        steps = results["decoding_steps"][arm]
        for before, after in zip(steps, steps[1:]):
            assert after["so_far"] == before["so_far"] + before["chosen"]
        for step in steps:
            probabilities = [p for _, p in step["candidates"]]
            assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
            assert step["chosen"] in (step["candidates"][0][0], "<eos>")
        last = steps[-1]
        written = last["so_far"] + ("" if last["chosen"] == "<eos>" else last["chosen"])
        assert written == results["hypotheses"][arm]["greedy"][0]


@pytest.mark.slow
def test_both_models_learn_and_the_transformer_writes_spanish_number_words(finished):
    report, results = finished
    for arm in ARMS:
        rows = [json.loads(line) for line in (report.parent / "arms" / arm / "metrics.jsonl").read_text().splitlines()]
        first_loss = next(r["loss"] for r in rows if r["kind"] == "train")
        last_val_loss = [r["val_loss"] for r in rows if r["kind"] == "eval"][-1]
        assert last_val_loss < first_loss - 1.0, arm  # well below an untrained model's
    words = [w for hypothesis in results["hypotheses"]["transformer"]["greedy"] for w in hypothesis.split()]
    assert words and sum(w in ES for w in words) / len(words) >= 0.5, words[:20]


@pytest.mark.slow
def test_resuming_a_finished_recipe_reads_its_arms_back(finished):
    report, results = finished
    data = report.parent.parent / "pairs.tsv"
    with pytest.raises(LmlabError, match="--resume"):
        run_recipe("translation", report.parent, budget="small", max_time=ARM_SECONDS, data=data, **QUIET)
    run_recipe("translation", report.parent, budget="small", max_time=ARM_SECONDS, data=data, resume=True, **QUIET)
    again = json.loads((report.parent / "results.json").read_text(encoding="utf-8"))
    assert again["arms"] == results["arms"] and again["hypotheses"] == results["hypotheses"]


def test_a_one_column_tsv_names_the_expected_columns(tmp_path):
    data = tmp_path / "one.tsv"
    data.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(LmlabError, match=r"English<TAB>Spanish.*columns: source, target") as error:
        run_recipe("translation", tmp_path / "out", max_time=1, data=data, **QUIET)
    assert "\n" not in str(error.value)


def test_no_pair_left_after_filtering_is_an_error(tmp_path):
    data = tmp_path / "long.tsv"
    data.write_text(" ".join(["word"] * 40) + "\t" + " ".join(["palabra"] * 40) + "\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="no pair left"):
        run_recipe("translation", tmp_path / "out", max_time=1, data=data, **QUIET)


def test_too_few_pairs_to_split_is_an_error(tmp_path):
    data = tmp_path / "few.tsv"
    data.write_text("\n".join(number_pairs(3, seed=1)) + "\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="too few to split"):
        run_recipe("translation", tmp_path / "out", max_time=1, data=data, **QUIET)


def test_without_data_the_error_names_the_source_and_the_flag(tmp_path):
    with pytest.raises(LmlabError, match=r"spa-eng\.zip.*--data PATH"):
        run_recipe("translation", tmp_path / "out", max_time=1, **QUIET)


def test_the_anki_archive_is_read_from_its_text_file(tmp_path):
    import zipfile

    from lmlab.recipes.translation import read_pairs

    archive = tmp_path / "spa-eng.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("spa-eng/_about.txt", "about the file")
        zipped.writestr("spa-eng/spa.txt", "Go.\tVe.\tCC-BY 2.0 (France) Attribution\nHi.\tHola.\tCC-BY\n")
    assert [tuple(p) for p in read_pairs(archive)] == [("Go.", "Ve."), ("Hi.", "Hola.")]
