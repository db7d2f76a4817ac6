"""``lmlab fill-mask``: the most likely fillers of a masked text, from a masked-LM encoder."""

from __future__ import annotations

import argparse
import json

from lmlab.cli.common import err


def cmd_fill_mask(args: argparse.Namespace) -> int:
    """One JSON line per candidate: the mask's index, the token, its id, probability and the filled text."""
    from lmlab.interop.fill_mask import fill_mask
    from lmlab.training.run import load_run

    run = load_run(args.model, err)
    for index, fillers in enumerate(fill_mask(run.model, run.tokenizer, args.text, args.top_k)):
        for filler in fillers:
            row = {"mask": index, "token": filler.token_str, "id": filler.token, "score": filler.score, "sequence": filler.sequence}
            print(json.dumps(row, ensure_ascii=False))
    return 0


def add_fill_mask_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("fill-mask", help="top-k fillers of the mask token in a text (BERT, RoBERTa, lmlab MLM runs)")
    parser.add_argument("model", help="a Hugging Face BERT/RoBERTa directory or an lmlab MLM run directory")
    parser.add_argument("text", help="a text with the mask token as the model spells it ([MASK] or <mask>)")
    parser.add_argument("--top-k", type=int, default=5, help="candidates per mask (default 5)")
    parser.set_defaults(func=cmd_fill_mask)
