"""``benchmarks/gpu_decode.py`` runs on the CPU with the tiny GPT-2 and Llama shapes (so the GPU
benchmark cannot rot): lmlab's greedy tokens equal transformers' static-cache generate, and each
side reports its speed (the bandwidth share is null off CUDA). No speed is asserted."""

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
NEW_TOKENS = 8


MODELS = ("tiny", "tiny-llama")


def test_the_gpu_decode_benchmark_runs_tiny_on_the_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_decode.py"), "--model", ",".join(MODELS),
                           "--device", "cpu", "--new-tokens", str(NEW_TOKENS), "--repeats", "1"],
                          capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 4 * len(MODELS)
    for model, (setup, *sides, result) in zip(MODELS, (rows[i:i + 4] for i in range(0, len(rows), 4))):
        assert setup["setup"] == model and setup["dtype"] == "float32" and setup["peak_bandwidth"] is None
        assert setup["weight_bytes"] == 4 * setup["parameters"]
        assert [(row["model"], row["side"]) for row in sides] == [(model, "lmlab"), (model, "transformers")]
        assert all(row["tokens_per_s"] > 0 and row["bandwidth_share"] is None for row in sides)
        assert result["model"] == model and result["tokens_identical"] is True and result["ratio"] > 0
        assert result["lmlab_tokens"] == result["transformers_tokens"] and len(result["lmlab_tokens"]) == NEW_TOKENS
        assert len(set(result["lmlab_tokens"])) > 1  # a model wide enough to vary its greedy choice
