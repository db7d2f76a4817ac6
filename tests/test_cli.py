"""The ``lmlab`` command, run in-process: a tiny train → info / eval / generate, and one-line errors."""

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.training import checkpoint as ckpt

TEXT = "to be, or not to be, that is the question.\n" * 40
TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.context_length=16",
        "train.batch_size=4", "train.eval_batches=1", "train.checkpoint_every=3", "train.eval_every=3",
        "train.warmup_steps=1"]


def run(*argv):
    """main(argv) with captured streams: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "hamlet.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code, stdout, stderr = run("train", "--data", corpus, "--out", out, "--max-steps", 6, "--no-progress",
                               "--seed", 3, "--set", *TINY, "train.sample_chars=20")
    assert code == 0, stderr
    return out, stdout


def test_train_prints_a_summary_and_a_sample(run_dir):
    out, stdout = run_dir
    summary = json.loads(stdout.splitlines()[0])
    assert summary["run_dir"] == str(out) and summary["step"] == 6 and summary["stop_reason"] == "max_steps"
    assert {"val_loss", "val_perplexity", "val_accuracy"} <= set(summary)
    assert "--- sample ---" in stdout
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000003", "step-00000006"]


def test_info(run_dir):
    out, _ = run_dir
    code, stdout, stderr = run("info", out)
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["training"]["step"] == 6 and info["training"]["max_steps"] == 6
    assert info["tokenizer"] == {"kind": "char", "vocab_size": len(set(TEXT))}
    assert info["model"]["parameters"] > 0 and info["config"]["model"]["d_model"] == 16
    assert info["checkpoint"].endswith("step-00000006")


def test_eval_prints_json_metrics(run_dir, corpus):
    out, _ = run_dir
    code, stdout, stderr = run("eval", out, "--batch-size", 4)
    assert code == 0, stderr
    metrics = json.loads(stdout)
    assert {"loss", "perplexity", "accuracy", "tokens"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert 0 <= metrics["accuracy"] <= 1
    assert metrics["tokens"] == round(len(TEXT) * 0.1) - 1  # every validation token after the first
    code, stdout, _ = run("eval", out, "--split", "train")
    assert code == 0 and json.loads(stdout)["split"] == "train"
    assert_one_line_error(run("eval", out, "--split", "train", "--data", corpus), "--data")


def test_eval_data_scores_the_whole_file(run_dir, tmp_path):
    """A file given to eval is scored whole, not its last 10%: its first 90% differs from its end,
    and the loss equals a direct computation over every window of the whole file."""
    from lmlab.evaluation import evaluate_lm
    from lmlab.training.run import load_run

    out, _ = run_dir
    other = tmp_path / "other.txt"
    other.write_text("that is the question. " * 30 + "to be, or not to be " * 4)
    code, stdout, stderr = run("eval", out, "--data", other, "--batch-size", 4)
    assert code == 0, stderr
    metrics = json.loads(stdout)
    loaded = load_run(out)
    ids = torch.tensor(loaded.tokenizer.encode(other.read_text()))
    window = loaded.config.model.context_length
    starts = range(0, len(ids) - 1, window)
    expected = evaluate_lm(loaded.model, (ids[s:s + window + 1][None] for s in starts))
    assert metrics["tokens"] == len(ids) - 1 == expected["tokens"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert metrics["split"] == "all" and metrics["data"] == str(other)


def test_generate(run_dir):
    out, _ = run_dir
    code, stdout, stderr = run("generate", out, "--prompt", "to be", "--max-new-tokens", 30, "--seed", 1)
    assert code == 0, stderr
    assert stdout.startswith("to be") and len(stdout) == len("to be") + 30 + 1
    assert set(stdout) <= set(TEXT)
    again = run("generate", out, "--prompt", "to be", "--max-new-tokens", 30, "--seed", 1)[1]
    assert again == stdout  # seeded sampling is reproducible
    code, greedy, _ = run("generate", out, "--strategy", "greedy", "--max-new-tokens", 40, "--prompt", "q")
    assert code == 0 and len(greedy) == 1 + 40 + 1  # runs past the 16-token context


def test_truncated_prompt_generates(run_dir):
    out, _ = run_dir
    code, stdout, stderr = run("generate", out, "--prompt", "to be or not " * 5, "--max-new-tokens", 5,
                               "--truncate-prompt")
    assert code == 0, stderr


def assert_one_line_error(result, *words):
    code, stdout, stderr = result
    assert code == 2, (stdout, stderr)
    assert stdout == ""  # nothing half-done on stdout
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("lmlab: error: ")
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]


def tiny_train(*argv):
    return run("train", "--no-progress", "--max-steps", 2, *argv)


def test_missing_data_file(tmp_path):
    assert_one_line_error(tiny_train("--data", tmp_path / "nope.txt", "--out", tmp_path / "r"), "nope.txt")


def test_unknown_preset(tmp_path):
    assert_one_line_error(tiny_train("--preset", "gpt-17", "--out", tmp_path / "r"), "gpt-17", "nanogpt-cpu")


def test_bad_set_key(tmp_path, corpus):
    assert_one_line_error(
        tiny_train("--data", corpus, "--out", tmp_path / "r", "--set", "model.n_layers=2"),
        "model.n_layers", "model.n_layer",
    )


def test_bad_set_value(tmp_path, corpus):
    assert_one_line_error(
        tiny_train("--data", corpus, "--out", tmp_path / "r", "--set", "model.n_layer=two"), "model.n_layer", "integer"
    )


def test_unknown_choice(tmp_path, corpus):
    assert_one_line_error(
        tiny_train("--data", corpus, "--out", tmp_path / "r", "--set", "model.norm=batchnorm"),
        "batchnorm", "layernorm", "rmsnorm",
    )


def test_impossible_model(tmp_path, corpus):
    assert_one_line_error(
        tiny_train("--data", corpus, "--out", tmp_path / "r", "--set", *TINY, "model.n_head=3"), "n_head"
    )


def test_config_file_missing(tmp_path):
    assert_one_line_error(tiny_train("--config", tmp_path / "missing.yaml", "--out", tmp_path / "r"), "missing.yaml")


def test_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    assert_one_line_error(tiny_train("--config", bad, "--out", tmp_path / "r"), "YAML")


def test_config_file_trains(tmp_path, corpus):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model:\n  n_layer: 1\n  n_head: 2\n  d_model: 16\n  context_length: 8\n"
        f"train:\n  batch_size: 2\n  eval_batches: 1\n  sample_chars: 0\ndata:\n  corpus: {corpus}\n"
    )
    code, stdout, stderr = tiny_train("--config", config, "--out", tmp_path / "r")
    assert code == 0, stderr
    assert json.loads(stdout)["step"] == 2


def test_training_into_an_existing_run_needs_resume(tmp_path, corpus, run_dir):
    out, _ = run_dir
    assert_one_line_error(tiny_train("--data", corpus, "--out", out, "--set", *TINY), "--resume")


def test_resume_with_nothing_to_resume(tmp_path, corpus):
    assert_one_line_error(tiny_train("--out", tmp_path / "empty", "--resume"), "nothing to resume")
    assert_one_line_error(
        tiny_train("--data", corpus, "--out", tmp_path / "empty", "--resume", "--set", *TINY), "nothing to resume"
    )


def test_resume_continues_a_run(tmp_path, run_dir):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir[0], copy)
    code, stdout, stderr = run("train", "--out", copy, "--resume", "--max-steps", 9, "--no-progress",
                               "--set", "train.sample_chars=0")
    assert code == 0, stderr
    assert json.loads(stdout)["step"] == 9
    assert "resuming from" in stderr and "step-00000006" in stderr


def test_bad_max_steps(tmp_path, corpus):
    assert_one_line_error(tiny_train("--data", corpus, "--out", tmp_path / "r", "--max-steps", 0), "--max-steps")


@pytest.mark.parametrize("size", ["0", "-2"])
def test_eval_bad_batch_size(run_dir, size):
    assert_one_line_error(run("eval", run_dir[0], "--batch-size", size), "--batch-size")


def test_generate_on_a_missing_dir(tmp_path):
    assert_one_line_error(run("generate", tmp_path / "no-such-run"), "no-such-run")


def test_generate_on_a_dir_without_checkpoints(tmp_path):
    assert_one_line_error(run("generate", tmp_path), "no usable checkpoint")


def test_corrupt_only_checkpoint(tmp_path, run_dir):
    copy = tmp_path / "corrupt"
    shutil.copytree(run_dir[0], copy)
    checkpoints = ckpt.list_checkpoints(copy)
    for old in checkpoints[:-1]:
        shutil.rmtree(old)
    model_file = checkpoints[-1] / ckpt.MODEL_FILE
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    for command in (["generate", copy], ["eval", copy], ["info", copy], ["generate", checkpoints[-1]]):
        assert_one_line_error(run(*command), "corrupt")


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, run_dir):
    copy = tmp_path / "fallback"
    shutil.copytree(run_dir[0], copy)
    newest = ckpt.list_checkpoints(copy)[-1]
    (newest / ckpt.MODEL_FILE).write_bytes(b"")
    code, stdout, stderr = run("info", copy)
    assert code == 0
    assert json.loads(stdout)["training"]["step"] == 3
    assert "warning" in stderr and "step-00000006" in stderr


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--top-p", "1.5"], ["top-p"]),
        (["--temperature", "0"], ["temperature"]),
        (["--top-k", "0"], ["top-k"]),
        (["--strategy", "beam-me-up"], ["greedy", "sample", "beam"]),
        (["--max-new-tokens", "-3"], ["max-new-tokens"]),
        (["--prompt", "to be ✈"], ["'✈'"]),
        (["--prompt", "to be or not to be"], ["--truncate-prompt"]),
        (["--prompt", ""], ["empty"]),
        (["--max-new-tokens", "many"], ["max-new-tokens"]),
    ],
)
def test_generate_bad_settings(run_dir, flags, words):
    out, _ = run_dir
    assert_one_line_error(run("generate", out, *flags), *words)


@pytest.mark.parametrize(
    "argv",
    [["frobnicate"], ["train", "--bogus"], ["generate"], ["eval", "x", "--split", "test"], []],
    ids=["unknown-subcommand", "unknown-flag", "missing-argument", "bad-choice", "no-subcommand"],
)
def test_usage_mistakes(argv):
    assert_one_line_error(run(*argv))


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--seed", str(2**70)], ["train.seed"]),
        (["--set", "model.d_ff=-4"], ["model.d_ff"]),
        (["--set", "train.min_lr=1.0"], ["train.min_lr"]),
        (["--set", "train.warmup_steps=-1"], ["warmup_steps"]),
    ],
)
def test_out_of_range_settings_are_one_line_errors(tmp_path, corpus, flags, words):
    assert_one_line_error(tiny_train("--data", corpus, "--out", tmp_path / "r", *flags), *words)


# ---------------------------------------------------------------- --out is not trusted blindly
def home_like(directory):
    """A directory a user owns: files of their own, some with names lmlab also uses."""
    (directory / "checkpoints" / ".step-backup").mkdir(parents=True)
    (directory / "checkpoints" / ".step-backup" / "weights.bin").write_bytes(b"mine")
    (directory / "metrics.jsonl").write_text("my own log line\n")
    (directory / "notes.txt").write_text("mine")
    return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_train_refuses_a_directory_with_files_lmlab_did_not_write(tmp_path, corpus):
    before = home_like(tmp_path)
    assert_one_line_error(tiny_train("--data", corpus, "--out", tmp_path, "--set", *TINY),
                          str(tmp_path), "did not write", "new or empty")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_directory_with_files_lmlab_did_not_write(tmp_path, run_dir):
    """An old run sits in a user's directory among their files: resuming must not rewrite any of them."""
    newest = ckpt.list_checkpoints(run_dir[0])[-1]
    shutil.copytree(newest, tmp_path / ckpt.CHECKPOINTS / newest.name)
    before = home_like(tmp_path)
    assert_one_line_error(tiny_train("--out", tmp_path, "--resume"), str(tmp_path), "did not write")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_train_refuses_the_root_directory(corpus):
    assert_one_line_error(tiny_train("--data", corpus, "--out", "/", "--set", *TINY), "did not write")


def test_a_second_run_on_one_directory_is_refused_while_the_first_holds_it(tmp_path, corpus):
    import signal
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "training"))
    from test_output_dir import hold_lock

    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        assert_one_line_error(tiny_train("--data", corpus, "--out", out, "--set", *TINY),
                              str(out), "another lmlab process")
        assert not (out / ckpt.CHECKPOINTS).exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, _, stderr = tiny_train("--data", corpus, "--out", out, "--set", *TINY)  # the dead holder's lock is gone
    assert code == 0, stderr


# ---------------------------------------------------------------- a full disk
def test_a_full_disk_is_one_line_and_resume_then_continues(tmp_path, corpus, monkeypatch):
    from safetensors import SafetensorError

    real_save_file = ckpt.save_file

    def disk_full_at_step_6(tensors, filename, metadata=None):
        if "step-00000006" in filename:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", disk_full_at_step_6)
    out = tmp_path / "run"
    assert_one_line_error(run("train", "--data", corpus, "--out", out, "--max-steps", 9, "--no-progress",
                              "--set", *TINY, "train.sample_chars=0"), "no room", "MB", "free")
    assert [p.name for p in (out / ckpt.CHECKPOINTS).iterdir()] == ["step-00000003"]
    monkeypatch.undo()
    code, stdout, stderr = run("train", "--out", out, "--resume", "--no-progress")
    assert code == 0, stderr
    assert json.loads(stdout.splitlines()[0])["step"] == 9 and "step-00000003" in stderr


def test_a_safetensors_error_is_one_line(tmp_path, run_dir, monkeypatch):
    from safetensors import SafetensorError

    import lmlab.interop.export as export

    def disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)\nmore")

    monkeypatch.setattr(export, "export_hf", disk_full)
    assert_one_line_error(run("convert", run_dir[0], tmp_path / "hf", "--to", "hf"), "No space left")


def test_eval_shows_a_progress_bar_over_every_batch(run_dir, corpus, monkeypatch):
    """Long evaluations show a tqdm bar on stderr whose total is the number of batches scored
    (the delay before it appears is set to zero here instead of waiting for a long evaluation)."""
    from lmlab.evaluation import perplexity

    monkeypatch.setattr(perplexity, "PROGRESS_DELAY_S", 0.0)
    out, _ = run_dir
    code, stdout, stderr = run("eval", out, "--data", corpus, "--batch-size", 4)
    assert code == 0, stderr
    full_windows, tail = divmod(len(TEXT) - 1, 16)  # context_length 16; a decoder scores the tail too
    batches = -(-full_windows // 4) + (tail > 0)
    assert json.loads(stdout)["tokens"] == len(TEXT) - 1
    assert "eval" in stderr and f"0/{batches}" in stderr
    code, _, stderr = run("eval", out, "--data", corpus, "--batch-size", 4, "--no-progress")
    assert code == 0 and stderr == ""


@pytest.mark.parametrize(("typed", "stop"), [(r"\n\n", "\n\n"), (r"\t", "\t"), (r"a\\n", "a\\n"), ("END", "END")])
def test_stop_texts_are_unescaped_as_documented(typed, stop):
    """``--stop "\\n\\n"`` (as the README shows) reaches the shell as backslash-n: it means a blank line."""
    from lmlab.cli import build_parser

    assert build_parser().parse_args(["generate", "run", "--stop", typed]).stop == [stop]


def test_an_unknown_stop_escape_is_a_usage_error():
    code, _, stderr = run("generate", "run", "--stop", r"\d")
    assert code == 2 and len(stderr.splitlines()) == 1 and "unknown escape" in stderr
