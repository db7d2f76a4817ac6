"""The confusion matrix as a PNG: written into a classify run at the end of ``lmlab finetune`` and
by ``lmlab eval --confusion-png``; without matplotlib, asking for it is one line naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "training"))

from finetune_fixtures import base_run, keyword_texts, write_csv  # noqa: E402
from lmlab.cli import main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("confusion")
    base = base_run(directory, "mlm")
    train = write_csv(directory / "train.csv", ["text", "label"], keyword_texts(32, seed=0))
    val = write_csv(directory / "val.csv", ["text", "label"], keyword_texts(8, seed=1))
    run = directory / "run"
    assert main(["finetune", str(base), "--task", "classify", "--data", str(train), "--val", str(val),
                 "--out", str(run), "--max-steps", "2", "--no-progress"]) == 0
    return run, val


def test_finetune_writes_the_confusion_png_into_the_run(classify_run):
    run, _ = classify_run
    assert (run / "confusion_matrix.png").read_bytes().startswith(PNG_MAGIC)


def test_eval_writes_the_confusion_png(classify_run, tmp_path, capsys):
    run, val = classify_run
    png = tmp_path / "out.png"
    assert main(["eval", str(run), "--data", str(val), "--confusion-png", str(png)]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "confusion_matrix" in capsys.readouterr().out


def test_without_matplotlib_the_png_is_a_one_line_error_naming_the_extra(classify_run, tmp_path, capsys, monkeypatch):
    run, val = classify_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["eval", str(run), "--data", str(val), "--confusion-png", str(tmp_path / "out.png")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "lmlab[viz]" in stderr
    assert main(["eval", str(run), "--data", str(val)]) == 0  # not asked for: no matplotlib needed
    assert not (tmp_path / "out.png").exists()
