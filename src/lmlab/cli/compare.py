"""``lmlab compare``: train variants of one config with the same budget and seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.common import err, positive
from lmlab.errors import require_optional


def cmd_compare(args: argparse.Namespace) -> int:
    require_optional("matplotlib", "viz", "the comparison plot (val_loss.png)")  # before any training
    from lmlab.training.compare import markdown_table, parse_grid, run_comparison, set_budget, write_tables
    from lmlab.training.config import apply_overrides, load_config_file, load_preset
    from lmlab.viz.curves import plot_validation_curves

    config = load_config_file(args.config) if args.config else load_preset(args.preset or "shakespeare-char")
    apply_overrides(config, [item for group in args.set for item in group])
    if args.data is not None:
        config.data.corpus = args.data
    max_steps = None if args.max_steps is None else positive(args.max_steps, "--max-steps")
    max_time = None if args.max_time is None else positive(args.max_time, "--max-time")
    set_budget(config, max_steps, max_time)
    results = run_comparison(config, parse_grid(args.grid), args.out, echo=err, progress=not args.no_progress)
    md_path, csv_path = write_tables(results, args.out)
    plot = plot_validation_curves({r.name: r.curve for r in results}, Path(args.out) / "val_loss.png")
    print(markdown_table(results), end="")
    err(f"wrote {md_path}, {csv_path} and {plot}")
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", help="train variants with the same budget and seed; table and plot")
    source = cmp.add_mutually_exclusive_group()
    source.add_argument("--preset", help="the base config: a preset shipped with lmlab (default shakespeare-char)")
    source.add_argument("--config", help="the base config: a YAML file with model/train/data sections")
    cmp.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                     help="values to compare, e.g. --grid model.position=learned,rope (repeat for a product)")
    cmp.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                     help="override the base config for every variant")
    cmp.add_argument("--data", help="corpus name or a file, directory or glob")
    budget = cmp.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimizer steps per variant")
    budget.add_argument("--max-time", type=float, help="seconds of training per variant")
    cmp.add_argument("--out", required=True, help="directory for the runs, results.md/.csv and val_loss.png")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")
    cmp.set_defaults(func=cmd_compare)
