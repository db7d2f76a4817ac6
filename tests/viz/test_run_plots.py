"""``lmlab plot``: curves of several runs from their metrics.jsonl, one panel per metric."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from lmlab.cli import main
from lmlab.training.metrics_log import metric_series, read_metrics
from lmlab.viz.run_plots import figure_size


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def write_run(folder: Path, steps: int, scale: float, moe: bool = False) -> Path:
    """A run directory whose metrics.jsonl has the rows the trainer writes: a train row per step
    (tokens/s unknown at step 1), an eval row every 2 steps."""
    folder.mkdir()
    rows = []
    for step in range(1, steps + 1):
        train = {"kind": "train", "step": step, "loss": scale / step, "lr": 0.001 * step,
                 "tokens_per_s": None if step == 1 else 100.0 * step, "elapsed_s": 0.5 * step}
        if moe:
            train["moe_load"] = [[0.25 + 0.01 * step, 0.75 - 0.01 * step]]
        rows.append(train)
        if step % 2 == 0:
            rows.append({"kind": "eval", "step": step, "elapsed_s": 0.5 * step + 0.1, "val_loss": scale / step + 0.1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_two_runs_overlaid_by_step_one_panel_per_metric(tmp_path):
    a, b = write_run(tmp_path / "small", 6, 2.0), write_run(tmp_path / "large", 4, 3.0)
    out = tmp_path / "curves.png"
    code, _, err = run("plot", a, b, "--out", out, "--metric", "val_loss,lr,tokens_per_s")
    assert code == 0, err
    with Image.open(out) as image:
        assert image.size == figure_size(3)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert sorted(numbers["runs"]) == ["large", "small"]
    small = numbers["runs"]["small"]
    assert small["val_loss"]["val_loss"] == {"x": [2, 4, 6], "y": [2.0 / s + 0.1 for s in (2, 4, 6)]}
    assert small["tokens_per_s"]["tokens_per_s"]["x"] == [2, 3, 4, 5, 6]  # no value at step 1
    assert numbers["runs"]["large"]["lr"]["lr"]["y"] == pytest.approx([0.001, 0.002, 0.003, 0.004])


def test_by_time_reads_elapsed_seconds(tmp_path):
    a = write_run(tmp_path / "a", 4, 1.0)
    out = tmp_path / "t.png"
    code, _, err = run("plot", a, "--out", out, "--metric", "loss", "--x", "time")
    assert code == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["runs"]["a"]["loss"]["loss"]["x"] == [0.5, 1.0, 1.5, 2.0]


def test_moe_load_is_one_series_per_layer_and_expert(tmp_path):
    rows = read_metrics(write_run(tmp_path / "moe", 3, 1.0, moe=True))
    series = metric_series(rows, "moe_load")
    assert sorted(series) == ["moe_load[0][0]", "moe_load[0][1]"]
    assert series["moe_load[0][1]"] == ([1, 2, 3], pytest.approx([0.74, 0.73, 0.72]))


def test_two_runs_with_the_same_name_are_labelled_by_path(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = write_run(tmp_path / "x" / "run", 2, 1.0), write_run(tmp_path / "y" / "run", 2, 2.0)
    out = tmp_path / "same.png"
    assert run("plot", a, b, "--out", out, "--metric", "loss")[0] == 0
    assert sorted(json.loads(out.with_suffix(".json").read_text())["runs"]) == sorted([str(a), str(b)])


def test_a_metric_never_logged_names_the_logged_ones(tmp_path):
    a = write_run(tmp_path / "dense", 2, 1.0)
    code, _, err = run("plot", a, "--out", tmp_path / "m.png", "--metric", "val_loss,moe_load")
    assert code == 2
    assert err.count("\n") == 1
    assert "never logged moe_load; it has: loss, lr, tokens_per_s, val_loss" in err


def test_a_trained_run_plots(tmp_path):
    """The log the trainer really writes (a tiny run, a few steps) plots by step."""
    text = tmp_path / "t.txt"
    text.write_text("to be, or not to be, that is the question.\n" * 20)
    code, _, err = run("train", "--data", text, "--out", tmp_path / "run", "--max-steps", "4", "--no-progress",
                       "--set", "model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.context_length=16",
                       "train.batch_size=2", "train.eval_batches=1", "train.sample_chars=0", "train.eval_every=2",
                       "train.warmup_steps=1")
    assert code == 0, err
    out = tmp_path / "trained.png"
    code, _, err = run("plot", tmp_path / "run", "--out", out, "--metric", "loss,val_loss")
    assert code == 0, err
    curves = json.loads(out.with_suffix(".json").read_text())["runs"]["run"]
    assert curves["val_loss"]["val_loss"]["x"] == [2, 4]
