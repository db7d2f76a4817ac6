"""``lmlab finetune``, ``classify``, ``seq2seq`` and ``eval`` on a fine-tuned run; every bad input
is one line on stderr, exit code 2, and writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "training"))

from finetune_fixtures import base_run, keyword_texts, write_csv, write_jsonl  # noqa: E402
from lmlab.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("bases")
    return {"encoder": base_run(directory, "mlm"), "decoder": base_run(directory, "causal-lm"),
            "encoder-decoder": base_run(directory, "span-corruption")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", ["text", "label"], keyword_texts(64, seed=0))
    write_csv(d / "val.csv", ["text", "label"], keyword_texts(16, seed=1))
    write_csv(d / "unseen.csv", ["text", "label"], [("cat dog", "maybe")])
    write_csv(d / "empty_text.csv", ["text", "label"], [("cat", "no"), ("  ", "yes")])
    write_csv(d / "empty_label.csv", ["text", "label"], [("cat", "no"), ("dog", "")])
    write_csv(d / "other_columns.csv", ["sentence", "label"], [("cat", "no")])
    (d / "empty.csv").write_text("")
    write_jsonl(d / "pairs.jsonl", [{"source": "abc", "target": "cba"}] * 8)
    return d


def test_finetune_classify_and_eval_end_to_end(tmp_path, bases, files, capsys):
    run = tmp_path / "run"
    code = main(["finetune", str(bases["encoder"]), "--task", "classify", "--data", str(files / "train.csv"),
                 "--val", str(files / "val.csv"), "--out", str(run), "--lr", "3e-3", "--epochs", "2",
                 "--batch-size", "8", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 16 and summary["best"] == str(run / "best")
    assert main(["classify", str(run), "--text", "the sun is red"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["label"] in ("no", "yes") and sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    assert main(["eval", str(run), "--data", str(files / "val.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_class"]) == {"no", "yes"} and len(report["confusion_matrix"]) == 2


BAD_INPUTS = [
    ("missing file", ["--task", "classify", "--data", "{files}/nope.csv"], "encoder", "no such file"),
    ("empty file", ["--task", "classify", "--data", "{files}/empty.csv"], "encoder", "is empty"),
    ("missing column", ["--task", "classify", "--data", "{files}/other_columns.csv"], "encoder",
     "no column 'text' (available: 'sentence', 'label')"),
    ("empty text", ["--task", "classify", "--data", "{files}/empty_text.csv", "--val", "{files}/val.csv"], "encoder",
     "data row 2: the 'text' text is empty"),
    ("empty label", ["--task", "classify", "--data", "{files}/empty_label.csv", "--val", "{files}/val.csv"],
     "encoder", "data row 2: the 'label' label is empty"),
    ("label unseen in training", ["--task", "classify", "--data", "{files}/train.csv", "--val", "{files}/unseen.csv"],
     "encoder", "label 'maybe' is not one of the label names"),
    ("classify on an encoder-decoder", ["--task", "classify", "--data", "{files}/train.csv"], "encoder-decoder",
     "classify fine-tunes an encoder (BERT, RoBERTa, an lmlab encoder run) or a Transformer decoder"),
    ("pooling on a decoder", ["--task", "classify", "--data", "{files}/train.csv", "--pooling", "mean"], "decoder",
     "--pooling is for encoders"),
    ("seq2seq on a decoder without a prompt format", ["--task", "seq2seq", "--data", "{files}/pairs.jsonl"],
     "decoder", "needs --prompt-format"),
    ("seq2seq on an encoder", ["--task", "seq2seq", "--data", "{files}/pairs.jsonl"], "encoder",
     "seq2seq needs an encoder-decoder or a decoder"),
]


@pytest.mark.parametrize("flags,model,message", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path, bases, files, capsys, flags, model, message):
    out = tmp_path / "run"
    argv = ["finetune", str(bases[model]), "--out", str(out), "--no-progress"]
    argv += [flag.replace("{files}", str(files)) for flag in flags]
    assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and message in stderr, stderr
    assert not out.exists()


def test_eval_with_a_label_training_never_saw_is_one_line_exit_2(tmp_path, bases, files, capsys):
    run = tmp_path / "run"
    assert main(["finetune", str(bases["encoder"]), "--task", "classify", "--data", str(files / "train.csv"),
                 "--out", str(run), "--max-steps", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(files / "unseen.csv")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "label 'maybe' is not one of" in stderr
    assert main(["seq2seq", str(run), "--text", "abc"]) == 2
    assert "needs a run fine-tuned with --task seq2seq" in capsys.readouterr().err
