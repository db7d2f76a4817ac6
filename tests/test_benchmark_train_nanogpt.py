"""``benchmarks/train_nanogpt_cpu.py --quick`` runs (so the script cannot rot): one JSON line with
both step times, both validation losses and their ratio and differences. No speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 3600  # only catches a hung benchmark; never a limit on how long it may take
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 60


def test_the_nanogpt_benchmark_runs_quick(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_nanogpt_cpu.py"), "--quick",
                           "--data", str(corpus)], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    row = json.loads(line)
    assert row["steps"] == row["peer_steps"] == 6
    assert row["lmlab_ms_per_iter"] > 0 and row["transformers_ms_per_iter"] > 0 and row["speedup"] > 0
    for name in ("val_loss", "val_loss_sampled"):
        # a few steps from the same initial scale: both near the uniform loss over the vocabulary
        assert 0 < row[f"lmlab_{name}"] < 5 and 0 < row[f"transformers_{name}"] < 5
        assert row[f"{name}_diff"] == pytest.approx(row[f"lmlab_{name}"] - row[f"transformers_{name}"], abs=2e-4)


def test_from_the_same_weights_both_sides_train_alike(tmp_path):
    """With ``--same-init`` the peer starts from lmlab's weights and sees the same batches: what
    is left of the loss difference is the training itself (schedule, AdamW groups, clipping)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_nanogpt_cpu.py"), "--quick", "--same-init",
                           "--data", str(corpus)], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["same_init"] is True
    assert abs(row["val_loss_diff"]) < 1e-3 and abs(row["val_loss_sampled_diff"]) < 1e-3
