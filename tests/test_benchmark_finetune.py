"""``benchmarks/finetune_vs_transformers.py --quick`` runs (so the script cannot rot): one JSON
line per case with both figures and their ratio. No speed is asserted."""

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


def test_the_finetune_benchmark_runs_quick():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune_vs_transformers.py"), "--quick",
                           "--steps", "1"], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["classify-bert-base", "seq2seq-t5-small"]
    for row in rows:
        assert row["lmlab_steps_per_s"] > 0 and row["transformers_steps_per_s"] > 0 and row["ratio"] > 0
