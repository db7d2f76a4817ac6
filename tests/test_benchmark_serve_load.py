"""``benchmarks/serve_load.py --shape tiny`` runs (so the script cannot rot): the sequential row
and one row per client count, every row generating the same tokens. No speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 3600  # only catches a hung benchmark; never a limit on how long it may take


def test_the_serve_load_benchmark_runs_tiny():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--shape", "tiny",
                           "--requests", "4", "--clients", "1,4"], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    setup, *rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert setup["setup"] == "tiny"
    assert [(r["mode"], r["clients"]) for r in rows] == [("generate", 1), ("server", 1), ("server", 4)]
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["tokens"] >= 4 * 16  # no EOS: every token asked for
    for r in rows:
        assert r["requests"] == 4 and r["tokens_per_s"] > 0 and r["ratio"] > 0
        assert 0 < r["ttft_p50_s"] <= r["ttft_p95_s"] and r["ttft_p50_s"] <= r["latency_p95_s"]
