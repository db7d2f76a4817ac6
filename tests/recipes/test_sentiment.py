"""The sentiment recipe end to end on tiny reviews whose label is set by clear sentiment words,
with a tiny random RoBERTa as the pretrained model: every arm and metric reported, accuracy,
macro-F1 and confusion matrices equal to scikit-learn's on the reported predictions, the
baselines learning; the IMDB archive layout; bad input (a decoder, missing columns, too few)."""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models

from lmlab.errors import LmlabError  # noqa: E402
from lmlab.recipes import run_recipe  # noqa: E402
from lmlab.recipes.sentiment import SIZES, read_reviews  # noqa: E402
from tiny_models import chat_model_dir, roberta_mlm_dir  # noqa: E402

metrics = pytest.importorskip("sklearn.metrics")
pytest.importorskip("transformers")

ARMS = ("tfidf-logreg", "scratch-encoder", "pretrained")
ARM_SECONDS = 8
QUIET = {"echo": lambda _: None}
GOOD, BAD, FILLER = "great good fine".split(), "dull bad long".split(), "the film play is a story".split()


def reviews(count: int, seed: int) -> list[dict[str, str]]:
    """Six neutral words and two of the label's sentiment words, shuffled; labels alternate."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        positive = index % 2 == 1
        words = [rng.choice(FILLER) for _ in range(6)] + [rng.choice(GOOD if positive else BAD) for _ in range(2)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return roberta_mlm_dir(tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, roberta):
    folder = tmp_path_factory.mktemp("sentiment")
    data = write_jsonl(folder / "reviews.jsonl", reviews(300, seed=0))
    report = run_recipe("sentiment", folder / "out", budget="small", max_time=ARM_SECONDS, data=data,
                        model=str(roberta), **QUIET)
    return report, json.loads((folder / "out" / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_results_hold_every_arm_metric_and_figure(finished):
    report, results = finished
    for arm in ARMS:
        scores = results["arms"][arm]
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "parameters", "steps"} <= set(scores)
        assert len(results["predictions"][arm]) == len(results["test_labels"]) > 0
        assert (report.parent / f"confusion-{arm}.png").read_bytes().startswith(b"\x89PNG")
    text = report.read_text(encoding="utf-8")
    assert all(f"| {arm} |" in text for arm in ARMS)
    assert "Most confident mistakes (pretrained)" in text and "--task classify" in text
    assert (report.parent / "curves.png").read_bytes().startswith(b"\x89PNG") and "](curves.png)" in text


@pytest.mark.slow
def test_accuracy_macro_f1_and_confusion_are_scikit_learns(finished):
    _, results = finished
    truth, names = results["test_labels"], results["labels"]
    for arm in ARMS:
        predicted = results["predictions"][arm]
        scores = results["arms"][arm]
        assert scores["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
        assert scores["macro_f1"] == pytest.approx(metrics.f1_score(truth, predicted, average="macro",
                                                                    labels=names, zero_division=0))
        assert scores["confusion_matrix"] == metrics.confusion_matrix(truth, predicted, labels=names).tolist()


@pytest.mark.slow
def test_the_baselines_learn_the_sentiment_words(finished):
    _, results = finished
    assert results["arms"]["tfidf-logreg"]["accuracy"] >= 0.9
    assert results["arms"]["scratch-encoder"]["accuracy"] >= 0.7  # chance is 0.5


def test_the_imdb_archive_gives_its_train_and_test_reviews(tmp_path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("pos", "neg"):
                for number in range(10):
                    data = f"{split} {label} review {number}<br />second line".encode()
                    member = tarfile.TarInfo(f"aclImdb/{split}/{label}/{number}_7.txt")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    found = read_reviews(archive, SIZES["small"], seed=0)
    assert found.names == ["neg", "pos"]
    for split, expected in (("train", "train"), ("val", "train"), ("test", "test")):
        texts, labels = found.split(split)
        assert texts and all(t.startswith(expected) and "<br />" not in t for t in texts)
        assert all(t.split()[1] == found.names[y] for t, y in zip(texts, labels))
    assert len(found.split("train")[0]) + len(found.split("val")[0]) == 20


def test_a_decoder_for_the_pretrained_arm_names_the_kind_needed(tmp_path):
    decoder = chat_model_dir(tmp_path / "llama")
    data = write_jsonl(tmp_path / "reviews.jsonl", reviews(40, seed=1))
    with pytest.raises(LmlabError, match="fine-tunes a pretrained encoder.*is a decoder model") as error:
        run_recipe("sentiment", tmp_path / "out", max_time=1, data=data, model=str(decoder), **QUIET)
    assert "\n" not in str(error.value)


def test_reviews_without_a_label_column_name_the_expected_columns(tmp_path, roberta):
    data = write_jsonl(tmp_path / "reviews.jsonl", [{"text": "a good film", "stars": "5"}] * 10)
    with pytest.raises(LmlabError, match="'text' and 'label' columns"):
        run_recipe("sentiment", tmp_path / "out", max_time=1, data=data, model=str(roberta), **QUIET)


def test_too_few_reviews_to_split_is_an_error(tmp_path, roberta):
    data = write_jsonl(tmp_path / "reviews.jsonl", reviews(3, seed=2))
    with pytest.raises(LmlabError, match="too few to split"):
        run_recipe("sentiment", tmp_path / "out", max_time=1, data=data, model=str(roberta), **QUIET)


def test_reviews_of_one_label_only_are_an_error(tmp_path, roberta):
    data = write_jsonl(tmp_path / "reviews.jsonl", [{"text": "a good film", "label": "pos"}] * 20)
    with pytest.raises(LmlabError, match=r"one label only \(pos\)"):
        run_recipe("sentiment", tmp_path / "out", max_time=1, data=data, model=str(roberta), **QUIET)
