"""Training in two processes under torchrun (gloo on the CPU), against one process.

Every run is a real ``python -m lmlab train`` subprocess (``--nproc 2`` launches torchrun
``--standalone``, bound to this machine) with one thread per process. The reference is the same
run in one process: with the same global batch, DDP and FSDP2 must follow its loss curve, a
sharded checkpoint must resume on one process and a one-process checkpoint on two, and a
process killed with SIGKILL must end the run with one clear line, leaving a checkpoint that
``--resume`` continues.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from lmlab.training import checkpoint as ckpt
from lmlab.training.run import load_run

pytestmark = pytest.mark.slow

HANG_GUARD_S = 3600  # only catches a hung child; a loaded machine may take as long as it needs
STEPS = 10
LOSS_TOLERANCE = 1e-5
CONFIG = f"""\
model:
  n_layer: 2
  n_head: 2
  d_model: 32
  context_length: 16
  dropout: 0.0
train:
  batch_size: 8
  lr: 3.0e-3
  warmup_steps: 2
  max_steps: {STEPS}
  eval_every: 10
  eval_batches: 1
  checkpoint_every: 5
  sample_chars: 0
data:
  corpus: {{corpus}}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}.\n"
                              for i in range(300)))
    path = root / "cfg.yaml"
    path.write_text(CONFIG.format(corpus=corpus))
    return path


def train_command(out: Path, *extra: str, config: Path | None = None, nproc: int | None = None) -> list[str]:
    source = ["--config", str(config)] if config else []
    launch = ["--nproc", str(nproc)] if nproc else []
    return [sys.executable, "-m", "lmlab", "train", *source, "--out", str(out), "--no-progress", *launch, *extra]


def train(out: Path, *extra: str, config: Path | None = None, nproc: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(train_command(out, *extra, config=config, nproc=nproc), env=ENV, text=True,
                          capture_output=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if row["kind"] == "train"}


def assert_same_curve(run_dir: Path, reference: Path, steps: range) -> None:
    mine, theirs = losses(run_dir), losses(reference)
    assert sorted(mine) == list(range(1, STEPS + 1))
    for step in steps:
        assert abs(mine[step] - theirs[step]) <= LOSS_TOLERANCE, (step, mine[step], theirs[step])


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    mine, theirs = load_run(run_dir, echo=print).model.state_dict(), load_run(reference, echo=print).model.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-5, rtol=0, msg=name)


def resumable_copy(run_dir: Path, destination: Path, step: int) -> Path:
    """``run_dir`` as it was at ``step``: later checkpoints removed (the log is cut on resume)."""
    shutil.copytree(run_dir, destination)
    for checkpoint in ckpt.list_checkpoints(destination):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    return destination


@pytest.fixture(scope="module")
def one_process(config_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    train(out, config=config_file)
    return out


def test_ddp_follows_one_process_and_its_checkpoint_resumes_on_one(config_file, one_process, tmp_path):
    out = tmp_path / "ddp"
    done = train(out, "--set", "train.distributed=ddp", config=config_file, nproc=2)
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2  # only process 0 prints
    assert_same_curve(out, one_process, range(1, STEPS + 1))
    middle = ckpt.list_checkpoints(out)[0]
    assert ckpt.is_sharded(middle) and len(list(middle.glob("shard-*.safetensors"))) == 2
    ckpt.verify_checkpoint(middle)

    resumed = resumable_copy(out, tmp_path / "on-one", step=5)
    done = train(resumed, "--resume", "--set", "train.distributed=none")
    assert "resuming from" in done.stderr and "step-00000005" in done.stderr
    assert_same_curve(resumed, one_process, range(6, STEPS + 1))
    assert_same_weights(resumed, one_process)


def test_fsdp_follows_one_process_and_reads_back_whole(config_file, one_process, tmp_path):
    out = tmp_path / "fsdp"
    train(out, "--set", "train.distributed=fsdp", config=config_file, nproc=2)
    assert_same_curve(out, one_process, range(1, STEPS + 1))
    assert ckpt.is_sharded(ckpt.list_checkpoints(out)[-1])
    assert_same_weights(out, one_process)  # load_run reads the sharded checkpoint with no process group


def test_one_process_checkpoint_resumes_on_two_with_fsdp(one_process, tmp_path):
    resumed = resumable_copy(one_process, tmp_path / "on-two", step=5)
    train(resumed, "--resume", "--set", "train.distributed=fsdp", nproc=2)
    assert_same_curve(resumed, one_process, range(6, STEPS + 1))
    assert_same_weights(resumed, one_process)


def test_a_killed_process_ends_the_run_with_one_line_and_the_last_checkpoint_resumes(config_file, tmp_path):
    out = tmp_path / "killed"
    command = train_command(out, "--set", "train.distributed=ddp", "train.max_steps=400", "train.checkpoint_every=2",
                            config=config_file, nproc=2)
    run = subprocess.Popen(command, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not (out / ckpt.CHECKPOINTS / ckpt.checkpoint_name(4)).is_dir() and run.poll() is None:
        time.sleep(0.1)
    workers = psutil.Process(run.pid).children(recursive=True)
    victim = next(worker for worker in workers if worker.environ().get("LOCAL_RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    _, stderr = run.communicate(timeout=HANG_GUARD_S)

    assert run.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("lmlab: error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "process 0 of 2: lost the other processes of the run" in errors[0] and "--resume" in errors[0]
    last = ckpt.latest_good_checkpoint(out, warn=print)
    assert last is not None and int(last.name.split("-")[1]) >= 4
    ckpt.verify_checkpoint(last)

    target = int(last.name.split("-")[1]) + 2
    done = train(out, "--resume", "--max-steps", str(target), "--set", "train.distributed=fsdp", nproc=2)
    assert json.loads(done.stdout.splitlines()[-1])["step"] == target
    assert sorted(losses(out)) == list(range(1, target + 1))
