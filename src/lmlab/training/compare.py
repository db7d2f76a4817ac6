"""Train variants of one config with the same budget and seed, and tabulate how they did.

A grid such as ``{"model.position": ["learned", "rope"], "model.ffn": ["gelu", "swiglu"]}``
gives every combination (here four runs). Each run goes through :func:`make_trainer` into its
own directory under the output directory; the results come back as :class:`VariantResult` rows
and are written as ``results.md`` and ``results.csv``. When the grid varies the positional
encoding, each run is also evaluated at twice its training context where the encoding can
extrapolate (everything but learned positions).
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lmlab.errors import LmlabError
from lmlab.evaluation import evaluate_lm
from lmlab.models import parameter_counts
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.run import make_trainer
from lmlab.training.trainer import METRICS_FILE, Trainer

EVALS_PER_RUN = 10  # with a step budget, evaluate about this often so the curves have points
POSITION_KEY = "model.position"


@dataclass
class VariantResult:
    """One trained variant: its size, speed and validation losses."""

    name: str
    overrides: list[str]
    parameters: int
    active_parameters: int
    steps: int
    tokens_per_s: float
    final_val_loss: float
    best_val_loss: float
    long_context_val_loss: float | None = None  # at 2× the training context, if measured
    curve: list[dict[str, float]] = field(default_factory=list)  # step, elapsed_s, val_loss


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["model.position=learned,rope", ...]`` → ``{"model.position": ["learned", "rope"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not options:
            raise LmlabError(f"--grid {item!r} must look like KEY=V1,V2,..., e.g. model.position=learned,rope")
        if key in grid:
            raise LmlabError(f"--grid names {key} twice; give all its values in one --grid KEY=V1,V2")
        grid[key] = options
    if not grid:
        raise LmlabError("give at least one --grid KEY=V1,V2,... to compare")
    return grid


def grid_overrides(grid: dict[str, list[str]]) -> list[list[str]]:
    """Every combination of the grid's values, as ``KEY=VALUE`` override lists."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, values)] for values in itertools.product(*grid.values())]


def variant_name(overrides: list[str]) -> str:
    """A short directory-safe name: ``model.position=rope`` → ``position-rope``."""
    parts = [item.removeprefix("model.").removeprefix("train.").replace("=", "-") for item in overrides]
    return "_".join(parts).replace("/", "-")


def set_budget(config: RunConfig, max_steps: int | None = None, max_time: float | None = None) -> None:
    """Give every run the same budget; with a step budget, evaluate about ``EVALS_PER_RUN`` times.
    Only the final checkpoint of each run is kept."""
    train = config.train
    if max_steps is not None:
        train.max_steps = max_steps
        train.eval_every = min(train.eval_every, max(1, max_steps // EVALS_PER_RUN))
    if max_time is not None:
        train.max_time = max_time
    train.checkpoint_every = train.max_steps
    train.keep_checkpoints = 1


def run_comparison(
    base: RunConfig,
    grid: dict[str, list[str]],
    out_dir: str | Path,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> list[VariantResult]:
    """Train each variant of ``base`` the grid describes into ``out_dir/NAME``; their results."""
    out_dir = Path(out_dir)
    variants = []
    for overrides in grid_overrides(grid):  # check every variant before training any
        config = apply_overrides(copy.deepcopy(base), overrides)
        config.model.validate()
        variants.append((overrides, config))
    results = []
    for overrides, config in variants:
        name = variant_name(overrides)
        echo(f"compare: training {name}")
        trainer, _ = make_trainer(config, out_dir / name, progress=progress, echo=echo)
        trainer.fit()
        result = summarise(name, overrides, trainer)
        if POSITION_KEY in grid:
            result.long_context_val_loss = long_context_loss(trainer)
        results.append(result)
    return results


def summarise(name: str, overrides: list[str], trainer: Trainer) -> VariantResult:
    """A finished run's result, from its model and its metrics log."""
    records = [json.loads(line) for line in (trainer.run_dir / METRICS_FILE).read_text().splitlines()]
    curve = [
        {"step": r["step"], "elapsed_s": r["elapsed_s"], "val_loss": r["val_loss"]}
        for r in records if r.get("kind") == "eval"
    ]
    speeds = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    counts = parameter_counts(trainer.model)
    return VariantResult(
        name=name,
        overrides=overrides,
        parameters=counts["total"],
        active_parameters=counts["active_per_token"],
        steps=trainer.step,
        tokens_per_s=statistics.median(speeds) if speeds else float("nan"),
        final_val_loss=curve[-1]["val_loss"],
        best_val_loss=min(point["val_loss"] for point in curve),
        curve=curve,
    )


def long_context_loss(trainer: Trainer) -> float | None:
    """Validation loss on windows twice the training context, or None where the model cannot
    run that long (learned positions, recurrent models) or the split is too short."""
    model_config = trainer.config.model
    length = 2 * model_config.context_length
    val_tokens = trainer.task.val_tokens
    if model_config.arch != "transformer" or model_config.position == "learned":
        return None
    if trainer.config.train.objective != "causal-lm" or len(val_tokens) <= length:
        return None
    train = trainer.config.train
    generator = torch.Generator().manual_seed(train.seed)
    windows = (val_tokens.random_windows(train.batch_size, length, generator) for _ in range(train.eval_batches))
    return evaluate_lm(trainer.model, windows)["loss"]


COLUMNS = ("variant", "params", "active params", "steps", "tokens/s", "final val loss", "best val loss")
LONG_COLUMN = "val loss @2×ctx"


def table_rows(results: list[VariantResult]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows; the 2× context column only when some run measured it."""
    long = any(r.long_context_val_loss is not None for r in results)
    header = list(COLUMNS) + ([LONG_COLUMN] if long else [])
    rows = []
    for r in results:
        row = [r.name, str(r.parameters), str(r.active_parameters), str(r.steps), f"{r.tokens_per_s:.0f}",
               f"{r.final_val_loss:.4f}", f"{r.best_val_loss:.4f}"]
        if long:
            row.append("—" if r.long_context_val_loss is None else f"{r.long_context_val_loss:.4f}")
        rows.append(row)
    return header, rows


def markdown_table(results: list[VariantResult]) -> str:
    """The results as a Markdown table."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(results: list[VariantResult], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` into ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "results.md", out_dir / "results.csv"
    md_path.write_text(markdown_table(results))
    header, rows = table_rows(results)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return md_path, csv_path
