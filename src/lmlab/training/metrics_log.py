"""Reading a run's ``metrics.jsonl`` back as curves: one series of (x, value) points per metric.

The trainer writes a ``train`` row every few steps (``loss``, ``lr``, ``tokens_per_s``, ...,
``moe_load`` for a Mixture-of-Experts model) and an ``eval`` row at each evaluation
(``val_loss``, ...); every row has ``step`` and ``elapsed_s``. A metric that holds a list
(``moe_load``: per layer, the share of each expert) becomes one series per entry, named
``moe_load[layer][expert]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError, read_text_file
from lmlab.training.trainer import METRICS_FILE

X_AXES = {"step": "step", "time": "elapsed_s"}  # --x choice → the field of a row
NOT_METRICS = {"kind", "step", "elapsed_s"}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``, in the order written."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise LmlabError(f"{run_dir} has no {METRICS_FILE}; pass a run directory written by 'lmlab train'")
    rows = []
    for number, line in enumerate(read_text_file(path, "it is written by 'lmlab train'").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise LmlabError(f"{path}, line {number}, is not JSON; the log is damaged (train again)") from None
    return rows


def logged_metrics(rows: list[dict[str, Any]]) -> list[str]:
    """The metric names the rows hold at least one value of, sorted."""
    return sorted({key for row in rows for key, value in row.items() if key not in NOT_METRICS and value is not None})


def metric_series(rows: list[dict[str, Any]], metric: str, x: str = "step") -> dict[str, tuple[list[float], list[float]]]:
    """Series name → (xs, values) of ``metric`` against ``x`` (``step`` or ``time``): one series,
    named ``metric``, for a number; one per entry for a list (``moe_load[0][1]``). Rows without
    the metric, or with no value yet (``tokens_per_s`` before the first timed steps), are skipped."""
    field = X_AXES[x]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if row.get(metric) is None:
            continue
        for name, value in _flattened(metric, row[metric]):
            xs, values = series.setdefault(name, ([], []))
            xs.append(row[field])
            values.append(value)
    return series


def run_curves(run_dir: str | Path, metrics: list[str], x: str = "step") -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """metric → its series (see :func:`metric_series`) for one run; a metric the run never logged
    is an :class:`LmlabError` naming the metrics it has."""
    if x not in X_AXES:
        raise LmlabError(f"unknown x axis {x!r}; choose {' or '.join(X_AXES)}")
    rows = read_metrics(run_dir)
    have = logged_metrics(rows)
    missing = [m for m in metrics if m not in have]
    if missing:
        raise LmlabError(
            f"{run_dir} never logged {', '.join(missing)}; it has: {', '.join(have) or 'no metrics'}"
        )
    return {metric: metric_series(rows, metric, x) for metric in metrics}


def _flattened(name: str, value: Any) -> list[tuple[str, float]]:
    if isinstance(value, list):
        return [item for i, entry in enumerate(value) for item in _flattened(f"{name}[{i}]", entry)]
    return [(name, float(value))]
