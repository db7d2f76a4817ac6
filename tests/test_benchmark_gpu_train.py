"""``benchmarks/gpu_train.py --tiny`` runs on the CPU (so the GPU benchmark cannot rot), in
bf16-mixed (its CUDA default) on a text file: the setup line, one row per side with its speed,
MFU and memory, and the ratio. Both sides start from the same weights and train on the same
batches, so their losses agree. No speed is asserted."""

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


def test_the_gpu_train_benchmark_runs_tiny_on_the_cpu(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--tiny", "--device", "cpu",
                           "--precision", "bf16-mixed", "--data", str(corpus), "--no-compile",
                           "--steps", "4", "--block", "2", "--warmup", "1", "--batch-size", "2"],
                          capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    setup, *sides, ratio = [json.loads(line) for line in done.stdout.splitlines()]
    assert setup["setup"] == "tiny" and setup["device"] == "cpu" and setup["precision"] == "bf16-mixed"
    assert setup["data"] == str(corpus) and setup["peak_flops_source"] == "measured" and setup["fused_adamw"]
    assert setup["matmul_parameters"]["lmlab"] == setup["matmul_parameters"]["transformers"]
    assert setup["flops_per_token"] > 6 * setup["matmul_parameters"]["lmlab"]  # plus the attention term
    assert [row["side"] for row in sides] == ["lmlab", "transformers"]
    for row in sides:
        assert row["steps"] == 4 and row["compiled"] is False and row["compile_s"] is None
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_memory_bytes"] > 0
    assert sides[0]["loss"] == pytest.approx(sides[1]["loss"], abs=1e-2)  # bf16 rounding of two implementations
    assert ratio["ratio"] > 0
