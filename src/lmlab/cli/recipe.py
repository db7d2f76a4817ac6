"""``lmlab recipe list`` and ``lmlab recipe run``: the textbooks' experiments, one command each."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.common import err, positive
from lmlab.recipes import BUDGETS, recipes, run_recipe

DEFAULT_BUDGET = "default"


def cmd_recipe_list(args: argparse.Namespace) -> int:
    """One line per recipe: name, default budget (seconds per arm) and description."""
    found = recipes()
    width = max((len(name) for name in found), default=0)
    for name, recipe in found.items():
        budget = f"{recipe.seconds_for(DEFAULT_BUDGET):g} s/arm"
        print(f"{name:<{width}}  {budget:>10}  {recipe.description}")
    return 0


def cmd_recipe_run(args: argparse.Namespace) -> int:
    """Run one recipe into ``--out`` and print the path of its report."""
    max_time = None if args.max_time is None else positive(args.max_time, "--max-time")
    report = run_recipe(
        args.name, args.out, budget=args.budget, max_time=max_time,
        data=None if args.data is None else Path(args.data), val=None if args.val is None else Path(args.val),
        model=args.model,
        extra_models=tuple(args.seq2seq_model), seed=args.seed, resume=args.resume,
        progress=not args.no_progress, echo=err,
    )
    print(report)
    return 0


def add_recipe_parser(sub: argparse._SubParsersAction) -> None:
    recipe = sub.add_parser("recipe", help="run a textbook experiment end to end and write its report")
    actions = recipe.add_subparsers(dest="recipe_command", required=True, parser_class=type(recipe))
    listing = actions.add_parser("list", help="the recipes, their default budgets and what each compares")
    listing.set_defaults(func=cmd_recipe_list)
    run = actions.add_parser("run", help="train and evaluate every arm of a recipe; writes report.md and results.json")
    run.add_argument("name", help="the recipe (see 'lmlab recipe list')")
    run.add_argument("--data", help="a local copy of the recipe's data instead of its public source")
    run.add_argument("--val", help="a local held-out split to evaluate on instead of the one the recipe holds out "
                                   "of --data (recipes that support it: chess)")
    run.add_argument("--model", help="the pretrained model an arm starts from: a directory or a Hub id")
    run.add_argument("--seq2seq-model", action="append", default=[], metavar="MODEL",
                     help="an encoder-decoder to fine-tune as one more arm (repeatable)")
    run.add_argument("--budget", choices=BUDGETS, default=DEFAULT_BUDGET,
                     help="the models' sizes and seconds per arm: small (a minute or two), default (about "
                          "10 minutes on a CPU) or large (one GPU)")
    run.add_argument("--max-time", type=float, help="seconds of training per arm instead of the budget's")
    run.add_argument("--seed", type=int, default=0, help="the seed every arm trains with")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--out", required=True, help="directory for the arms, report.md, results.json and figures")
    run.set_defaults(func=cmd_recipe_run)
