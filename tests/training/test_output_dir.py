"""Output directories: lmlab writes only into new, empty or its own directories, and one process
at a time (an exclusive lock that dies with its process)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.errors import LmlabError
from lmlab.output_dir import LOCK_FILE, MARKER_FILE, claim_output_dir, lock_output_dir

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_new_directory_is_created_and_marked(tmp_path):
    out = claim_output_dir(tmp_path / "a" / "b", "run")
    assert out.is_dir() and json.loads((out / MARKER_FILE).read_text())["kind"] == "run"


def test_an_empty_or_own_directory_is_accepted(tmp_path):
    claim_output_dir(tmp_path, "run")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert claim_output_dir(tmp_path, "run") == tmp_path


@pytest.mark.parametrize("names", [["notes.txt"], ["config.json", "model.safetensors"], [".bashrc"]])
def test_a_directory_with_foreign_files_is_refused_and_left_alone(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text("mine")
    with pytest.raises(LmlabError) as info:
        claim_output_dir(tmp_path, "hf-model")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "did not write" in message
    assert "new or empty" in message and names[0] in message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_output_of_another_kind_is_refused(tmp_path):
    claim_output_dir(tmp_path, "token-shards")
    with pytest.raises(LmlabError, match="another kind"):
        claim_output_dir(tmp_path, "run")


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LmlabError, match="not a directory"):
        claim_output_dir(tmp_path / "f", "run")


def test_outputs_from_before_markers_are_adopted_only_if_nothing_else_is_there(tmp_path):
    (tmp_path / "old-run" / "checkpoints").mkdir(parents=True)
    claim_output_dir(tmp_path / "old-run", "run", legacy_names=("checkpoints", "metrics.jsonl"))
    assert (tmp_path / "old-run" / MARKER_FILE).is_file()
    (tmp_path / "home" / "checkpoints").mkdir(parents=True)
    (tmp_path / "home" / "Documents").mkdir()
    with pytest.raises(LmlabError, match="Documents"):
        claim_output_dir(tmp_path / "home", "run", legacy_names=("checkpoints", "metrics.jsonl"))


# ---------------------------------------------------------------- one process at a time
def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process that claims and locks ``directory`` as a training run does, until killed."""
    code = ("import sys; from pathlib import Path; from lmlab.training.run import claim_run_dir; "
            "lock = claim_run_dir(Path(sys.argv[1]), resume=False); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": SRC})
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_directory_locked_by_another_process_is_refused(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(LmlabError) as info:
            lock_output_dir(tmp_path)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path) in message
        assert "another lmlab process" in message and str(holder.pid) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock_output_dir(tmp_path).release()  # a dead process's lock is gone with it


def test_a_lock_is_released_and_taken_again_in_one_process(tmp_path):
    lock = lock_output_dir(tmp_path)
    with pytest.raises(LmlabError, match="in use"):
        lock_output_dir(tmp_path)
    lock.release()
    lock.release()
    lock_output_dir(tmp_path).release()
    assert (tmp_path / LOCK_FILE).is_file()
