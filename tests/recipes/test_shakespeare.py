"""The ``shakespeare`` recipe end to end on a slice of the Shakespeare excerpt: both arms and every
metric in results.json, the accuracy and loss against a float64 recomputation over every held-out
window, samples at each temperature, the curves figure, resuming; and the learning check on the
tiny Shakespeare corpus: the Transformer beats the GRU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.data.corpora import split_train_val
from lmlab.recipes import run_recipe
from lmlab.recipes.shakespeare import ARMS, PROMPT_CHARS, TEMPERATURES
from lmlab.training.run import load_run

ROOT = Path(__file__).resolve().parents[2]
EXCERPT = ROOT / "tests" / "fixtures" / "shakespeare_excerpt.txt"
TINY_SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
METRICS = ("val_loss", "accuracy", "parameters", "tokens_per_s", "steps", "eval_tokens")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEARNING_CHECK_SECONDS = 15  # per arm: the small budget's models, trained for this long


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while the recipe runs: the GRU's many small steps crawl when the
    threads of several processes compete for few cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread) -> tuple[Path, Path, dict]:
    """A small-budget run of a few steps per arm on 24,000 characters of the excerpt."""
    tmp = tmp_path_factory.mktemp("shakespeare")
    data = tmp / "excerpt.txt"
    data.write_text(EXCERPT.read_text(encoding="utf-8")[:24_000], encoding="utf-8")
    out = tmp / "out"
    run_recipe("shakespeare", out, budget="small", data=data, arm_steps=3, echo=lambda _: None)
    return data, out, json.loads((out / "results.json").read_text())


def heldout_reference(run_dir: Path, data: Path) -> tuple[float, float, int]:
    """Mean loss and argmax accuracy in float64 over the held-out text cut into consecutive
    windows of context + 1 characters sharing one character (a shorter tail last)."""
    run = load_run(run_dir, echo=lambda _: None)
    window = run.config.model.context_length
    _, val_text = split_train_val(data.read_text(encoding="utf-8"), run.config.data.val_fraction)
    ids = run.tokenizer.encode(val_text)
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(ids) - 1, window):
        piece = torch.tensor([ids[start:start + window + 1]])  # (1, <= window+1)
        with torch.no_grad():
            logits = run.model(piece[:, :-1]).double()[0]  # (T, V)
        targets = piece[0, 1:]
        log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        total_loss -= log_probs[torch.arange(len(targets)), targets].sum().item()
        correct += int((logits.argmax(-1) == targets).sum())
        count += len(targets)
    return total_loss / count, correct / count, count


def test_results_have_both_arms_and_every_metric(finished):
    _, _, results = finished
    assert set(results["arms"]) == set(ARMS)
    for metrics in results["arms"].values():
        assert all(math.isfinite(metrics[name]) for name in METRICS)
        assert metrics["steps"] == 3 and metrics["tokens_per_s"] > 0
    assert results["winner"] in ARMS


def test_accuracy_and_loss_match_a_float64_recomputation(finished):
    data, out, results = finished
    for arm in ARMS:
        metrics = results["arms"][arm]
        loss, accuracy, count = heldout_reference(out / "arms" / arm, data)
        assert metrics["eval_tokens"] == count
        assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert metrics["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_parameters_are_the_models_own(finished):
    _, out, results = finished
    for arm in ARMS:
        model = load_run(out / "arms" / arm, echo=lambda _: None).model
        assert results["arms"][arm]["parameters"] == sum(p.numel() for p in model.parameters())
    gru = load_run(out / "arms" / "gru", echo=lambda _: None).config.model
    assert gru.arch == "gru" and gru.n_layer == 1


def test_report_has_table_samples_curves_and_commands(finished):
    _, out, results = finished
    report = (out / "report.md").read_text()
    assert report.index("| gru |") < report.index("## Samples") < report.index("## Reproduce each arm")
    assert len(results["prompt"]) == PROMPT_CHARS
    for arm in ARMS:
        assert set(results["samples"][arm]) == {f"{t:g}" for t in TEMPERATURES}
        assert all(results["samples"][arm].values())
        assert f"**{arm}, temperature 1.5**" in report
        assert f"lmlab train --config {out / 'arms' / f'{arm}.yaml'} --out {out / 'arms' / arm}" in report
        assert [point["step"] for point in results["curves"][arm]][-1] == 3
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_resume_reads_the_finished_arms_back(finished, capsys):
    data, out, results = finished
    code = main(["recipe", "run", "shakespeare", "--budget", "small", "--data", str(data), "--resume",
                 "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(out / "report.md")
    assert captured.err.count("finished before, results read back") == len(ARMS)
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]


def test_recipe_list_shows_shakespeare_with_its_default_budget(capsys):
    assert main(["recipe", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("shakespeare "))
    assert "240 s/arm" in line and "GRU" in line


@pytest.mark.slow
def test_the_transformer_beats_the_gru_at_equal_time(tmp_path, one_thread):
    if not TINY_SHAKESPEARE.is_file():
        pytest.skip(f"{TINY_SHAKESPEARE} is not here")
    run_recipe("shakespeare", tmp_path / "out", budget="small", max_time=LEARNING_CHECK_SECONDS,
               data=TINY_SHAKESPEARE, echo=lambda _: None)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    gru, transformer = results["arms"]["gru"], results["arms"]["transformer"]
    assert transformer["val_loss"] < gru["val_loss"]
    assert transformer["accuracy"] > gru["accuracy"]
    assert results["winner"] == "transformer"
    assert transformer["val_loss"] < math.log(transformer["vocab_size"]) - 1.0  # far better than uniform
