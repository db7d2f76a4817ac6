"""The headline guarantee: a training run SIGKILLed at any moment and resumed with ``--resume``
ends with the same weights, bit for bit, as a run that was never stopped.

Each run is a real ``python -m lmlab.cli train`` subprocess with the same environment (one
thread), so the kill can land anywhere: inside a step, between steps, or while a checkpoint is
being written.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lmlab.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

MAX_STEPS = 48
CHECKPOINT_EVERY = 4
CONFIG = f"""\
model:
  n_layer: 2
  n_head: 2
  d_model: 64
  context_length: 32
  dropout: 0.1
train:
  batch_size: 16
  grad_accum: 2
  lr: 3.0e-3
  min_lr: 3.0e-4
  warmup_steps: 5
  max_steps: {MAX_STEPS}
  eval_every: 10
  eval_batches: 2
  checkpoint_every: {CHECKPOINT_EVERY}
  keep_checkpoints: 2
  sample_chars: 0
data:
  corpus: {{corpus}}
"""
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}
HANG_GUARD_S = 3600  # only catches a hung child; a loaded machine may take as long as it needs


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigkill")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}.\n"
                              for i in range(300)))
    path = root / "cfg.yaml"
    path.write_text(CONFIG.format(corpus=corpus))
    return path


def train_command(config_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lmlab.cli", "train", "--config", str(config_file), "--out", str(out),
            "--no-progress", *extra]


def start(config_file, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(train_command(config_file, out, *extra), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 0, stderr
    return json.loads(stdout.splitlines()[0])


def final_files(run_dir: Path) -> tuple[dict, dict]:
    final = ckpt.list_checkpoints(run_dir)[-1]
    assert final.name == ckpt.checkpoint_name(MAX_STEPS)
    ckpt.verify_checkpoint(final)
    return load_file(str(final / ckpt.MODEL_FILE)), load_file(str(final / ckpt.OPTIMIZER_FILE))


def logged(run_dir: Path) -> list[tuple]:
    """What the run logged, minus wall-clock fields."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss"), r.get("lr"), r.get("val_loss")) for r in records]


def kill_after_checkpoint(config_file, out, checkpoint_step: int, delay_s: float) -> int:
    """Start a run, wait for its checkpoint at ``checkpoint_step``, wait ``delay_s`` more, SIGKILL it.

    Returns the newest checkpoint step left on disk.
    """
    process = start(config_file, out)
    target = out / ckpt.CHECKPOINTS / ckpt.checkpoint_name(checkpoint_step)
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while not target.exists():
            assert process.poll() is None, f"the run ended before its step-{checkpoint_step} checkpoint: " + \
                process.communicate()[1]
            assert time.monotonic() < deadline, "no checkpoint appeared within the hang guard"
            time.sleep(0.002)
        time.sleep(delay_s)
        assert process.poll() is None, "the run finished before it could be killed; use an earlier kill time"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == -signal.SIGKILL
    left = ckpt.list_checkpoints(out)
    assert left, "the first checkpoint should have survived"
    return int(left[-1].name.removeprefix("step-"))


def test_sigkill_and_resume_equals_an_uninterrupted_run(config_file, tmp_path):
    reference = start(config_file, tmp_path / "uninterrupted")  # runs alongside the killed runs
    rng = random.Random(20240611)
    kills = [(rng.choice(range(CHECKPOINT_EVERY, 28, CHECKPOINT_EVERY)), rng.uniform(0.0, 0.04)) for _ in range(2)]
    resumed_dirs = []
    for index, (checkpoint_step, delay_s) in enumerate(kills):
        out = tmp_path / f"killed-{index}"
        left_at = kill_after_checkpoint(config_file, out, checkpoint_step, delay_s)
        assert checkpoint_step <= left_at < MAX_STEPS
        resumed = start(config_file, out, "--resume")
        stdout, stderr = resumed.communicate(timeout=HANG_GUARD_S)
        assert resumed.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[0])["step"] == MAX_STEPS
        assert "resuming from" in stderr
        assert not [p for p in (out / ckpt.CHECKPOINTS).iterdir() if p.name.startswith(".")]
        resumed_dirs.append(out)

    assert finish(reference)["step"] == MAX_STEPS
    expected_model, expected_optimizer = final_files(tmp_path / "uninterrupted")
    for out in resumed_dirs:
        model, optimizer = final_files(out)
        assert model.keys() == expected_model.keys()
        for name, tensor in expected_model.items():
            assert tensor.equal(model[name]), f"{out.name}: {name} differs from the uninterrupted run"
        assert optimizer.keys() == expected_optimizer.keys()
        for name, tensor in expected_optimizer.items():
            assert tensor.equal(optimizer[name]), f"{out.name}: optimizer {name} differs"
        assert logged(out) == logged(tmp_path / "uninterrupted")  # the log reads as one run
