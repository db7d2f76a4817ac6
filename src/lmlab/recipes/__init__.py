"""The textbooks' experiments as one-command recipes that write a report.

Each module here that defines ``RECIPE`` (a :class:`~lmlab.recipes.base.Recipe`) is a recipe;
:func:`recipes` finds them, :func:`run_recipe` runs one into an output directory.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.output_dir import claim_output_dir, lock_output_dir
from lmlab.recipes.base import ARMS_DIR, BUDGETS, Recipe, RecipeContext, write_report

RECIPE_KIND = "recipe"  # the kind of output (see lmlab.output_dir) a recipe's directory is

__all__ = ["BUDGETS", "RECIPE_KIND", "Recipe", "RecipeContext", "get_recipe", "recipes", "run_declared", "run_recipe"]


def recipes() -> dict[str, Recipe]:
    """Every recipe, by name."""
    found: dict[str, Recipe] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        recipe = getattr(module, "RECIPE", None)
        if isinstance(recipe, Recipe):
            found[recipe.name] = recipe
    return dict(sorted(found.items()))


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is an error listing the known ones."""
    known = recipes()
    if name not in known:
        raise LmlabError(f"unknown recipe {name!r}; choose one of {', '.join(known)} (see 'lmlab recipe list')")
    return known[name]


def run_recipe(name: str, out_dir: str | Path, *, budget: str = "default", max_time: float | None = None,
               **options) -> Path:
    """Run recipe ``name`` into ``out_dir`` and return its ``report.md``. ``max_time`` (seconds per
    arm) overrides the budget; ``options`` are :class:`RecipeContext` fields (data, model, seed,
    resume, ...)."""
    return run_declared(get_recipe(name), out_dir, budget=budget, max_time=max_time, **options)


def run_declared(recipe: Recipe, out_dir: str | Path, *, budget: str = "default", max_time: float | None = None,
                 **options) -> Path:
    """:func:`run_recipe` for a :class:`Recipe` object. Its data (``--data``, else its public source,
    downloaded) and ``--val`` are checked before ``out_dir`` is created, so a mistake there leaves
    nothing behind."""
    seconds = recipe.seconds_for(budget) if max_time is None else max_time
    if not seconds > 0:
        raise LmlabError(f"--max-time must be positive seconds, got {seconds}")
    context = RecipeContext(recipe=recipe, out_dir=Path(out_dir), arm_seconds=seconds, budget=budget, **options)
    if context.data is not None or recipe.source is not None:
        context.data_path()
    context.val_path()
    out = claim_output_dir(out_dir, RECIPE_KIND)
    context.out_dir = out
    lock = lock_output_dir(out)
    try:
        if not context.resume and (out / ARMS_DIR).exists():
            raise LmlabError(f"{out} already holds a recipe run; pass --resume to continue it or choose a new --out")
        started = time.perf_counter()
        report = recipe.run(context)
        return write_report(context, report, time.perf_counter() - started)
    finally:
        lock.release()
