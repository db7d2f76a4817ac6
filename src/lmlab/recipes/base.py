"""What every recipe shares: its declaration (:class:`Recipe`), the context it runs in
(:class:`RecipeContext`: output directory, data, models, seed, budget, resume), arms that are
ordinary run directories and resume where they stopped, and the report it writes
(:class:`RecipeReport` → ``report.md`` and ``results.json``).

A recipe module defines ``RECIPE = Recipe(...)``; :mod:`lmlab.recipes` finds it by itself.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from lmlab.errors import LmlabError, read_json_file
from lmlab.storage import cache_dir

BUDGETS = ("small", "default", "large")
ARMS_DIR = "arms"
ARM_RESULT = "arm-result.json"


@dataclass(frozen=True)
class DataSource:
    """A recipe's public data: where it lives, its sha256, and what a local ``--data`` must look like."""

    description: str  # "English-Spanish sentence pairs (Anki/Tatoeba spa-eng)"
    url: str
    sha256: str
    filename: str  # the name it is cached under in ``$LMLAB_CACHE/recipes/``
    local_format: str  # "a TSV file of English<TAB>Spanish lines"


@dataclass(frozen=True)
class Recipe:
    """One textbook experiment: its name, a one-line description, the seconds each arm trains for
    at each budget, its data source and the function that runs it and returns its report."""

    name: str
    description: str
    arm_seconds: Mapping[str, float]  # budget name → training seconds per arm
    run: Callable[["RecipeContext"], "RecipeReport"]
    source: DataSource | None = None
    held_out_format: str | None = None  # what ``--val`` takes ("a .pgn file of games"); None: no --val

    def seconds_for(self, budget: str) -> float:
        """Training seconds per arm at ``budget`` (one of :data:`BUDGETS`)."""
        if budget not in self.arm_seconds:
            raise LmlabError(f"unknown budget {budget!r} for recipe {self.name!r}; choose one of {', '.join(BUDGETS)}")
        return self.arm_seconds[budget]


@dataclass
class RecipeContext:
    """Everything a recipe is run with. ``arm_seconds`` is the wall-clock training budget of each
    arm (the same for all arms, so the comparison is fair)."""

    recipe: Recipe
    out_dir: Path
    arm_seconds: float
    seed: int = 0
    data: Path | None = None
    val: Path | None = None  # a local held-out split instead of the recipe's own (recipes with held_out_format)
    model: str | None = None
    extra_models: tuple[str, ...] = ()  # repeatable model flags (summarization's encoder-decoders)
    budget: str = "default"
    resume: bool = False
    progress: bool = False
    echo: Callable[[str], None] = print
    arm_steps: int | None = None  # tests: every arm trains this many optimizer steps instead of arm_seconds
    _data: Path | None = field(default=None, init=False, repr=False)  # data_path(), found once

    def arm_dir(self, arm: str) -> Path:
        """The run directory of ``arm`` (``OUT/arms/ARM``)."""
        return self.out_dir / ARMS_DIR / arm

    def data_path(self) -> Path:
        """``--data`` when given, else the recipe's public source, downloaded once and checksummed.
        Offline without ``--data``, the error says where to get the data and which flag takes it."""
        if self._data is None:
            self._data = self._find_data()
        return self._data

    def val_path(self) -> Path | None:
        """``--val`` (checked to exist), or None when the recipe holds out part of its data itself."""
        if self.val is None:
            return None
        if self.recipe.held_out_format is None:
            raise LmlabError(f"recipe {self.recipe.name!r} holds out part of its --data itself and takes no "
                             "--val; drop --val")
        if not self.val.exists():
            raise LmlabError(f"--val {self.val}: no such file or directory ({self.recipe.held_out_format})")
        return self.val

    def _find_data(self) -> Path:
        if self.data is not None:
            if not self.data.exists():
                raise LmlabError(f"--data {self.data}: no such file or directory")
            return self.data
        source = self.recipe.source
        if source is None:
            raise LmlabError(f"recipe {self.recipe.name!r} needs --data PATH")
        from lmlab.data.corpora import download

        try:
            return download(source.url, cache_dir() / "recipes" / source.filename, source.sha256)
        except LmlabError as exc:
            raise LmlabError(f"recipe {self.recipe.name!r} needs {source.description}: could not download "
                             f"{source.url} ({exc}); download it yourself and pass --data PATH "
                             f"({source.local_format})") from None

    def run_arm(self, arm: str, train: Callable[[Path, bool], dict[str, Any]],
                doing: str | None = None) -> dict[str, Any]:
        """Train and evaluate ``arm`` once: ``train(run_dir, resume)`` returns the arm's results,
        which are stored beside the run. A finished arm is read back instead of trained again
        (``--resume``); an arm stopped part-way continues from its newest checkpoint. ``doing``
        says what an arm that trains nothing does instead (``"decoding the prompt"``), for the
        line announcing it."""
        directory = self.arm_dir(arm)
        done = directory / ARM_RESULT
        if done.is_file():
            if not self.resume:
                raise LmlabError(f"{self.out_dir} already holds this recipe's results; "
                                 f"pass --resume to continue it or choose a new --out")
            self.echo(f"{arm}: finished before, results read back")
            return read_json_file(done, "delete the arm's directory to train it again")
        resume = self.resume and directory.exists() and any(directory.iterdir())
        self.echo(f"{arm}: {doing or self._training(resume)} in {directory}")
        started = time.perf_counter()
        result = train(directory, resume)
        result.setdefault("wall_s", round(time.perf_counter() - started, 2))
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(done, json.dumps(result, indent=2) + "\n")
        return result

    def _training(self, resume: bool) -> str:
        budget = f"{self.arm_steps} steps" if self.arm_steps is not None else f"{self.arm_seconds:g} s"
        return f"{'resuming' if resume else 'training'} for {budget}"

    def save_arm_config(self, arm: str, config: dict[str, Any]) -> Path:
        """Write ``arm``'s full run config as YAML beside the arms, for the report's reproduce commands."""
        path = self.out_dir / ARMS_DIR / f"{arm}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, yaml.safe_dump(config, sort_keys=False))
        return path


@dataclass
class RecipeReport:
    """What a recipe found. ``columns``/``rows``: the comparison table (one row per arm, first in
    the report); ``sections``: (heading, markdown) pairs — samples, task tables — that follow;
    ``commands``: arm → the exact command that reproduces it; ``figures``: PNG files in the output
    directory; ``results``: everything measured, written to ``results.json`` (``arms`` maps each
    arm to its metrics)."""

    title: str
    summary: str
    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    results: dict[str, Any]
    sections: list[tuple[str, str]] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def markdown_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of ``rows`` (mappings) over ``columns``; floats to four significant digits."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def write_report(context: RecipeContext, report: RecipeReport, elapsed_s: float) -> Path:
    """Write ``report.md`` (table, summary, sections, figures, commands) and ``results.json``
    into the output directory; returns the report's path."""
    parts = [f"# {report.title}", "", markdown_table(report.columns, report.rows), "", report.summary, ""]
    for heading, body in report.sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    if report.figures:
        parts += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in report.figures] + [""]
    if report.commands:
        parts += ["## Reproduce each arm", "", "```bash"] + list(report.commands.values()) + ["```", ""]
    parts += [f"Recipe `{context.recipe.name}`, budget `{context.budget}` ({context.arm_seconds:g} s per arm), "
              f"seed {context.seed}, {elapsed_s:.0f} s in all.", ""]
    report_path = context.out_dir / "report.md"
    _write_atomically(report_path, "\n".join(parts))
    results = {"recipe": context.recipe.name, "budget": context.budget, "arm_seconds": context.arm_seconds,
               "seed": context.seed, "elapsed_s": round(elapsed_s, 2), **report.results}
    _write_atomically(context.out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return report_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
