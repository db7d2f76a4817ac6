"""``lmlab attention``: interactive attention views (head, model, neuron) as one HTML file, and
optionally a PNG grid of heat maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.cli.common import err, positive
from lmlab.errors import LmlabError, require_optional

DEFAULT_MAX_TOKENS = 64


def cmd_attention(args: argparse.Namespace) -> int:
    from lmlab.cli.generate import _decoder_start
    from lmlab.generation.attention_trace import trace_attention
    from lmlab.training.run import load_run

    if not args.text.strip():
        raise LmlabError("--text is empty; give the text whose attention to show")
    if args.text_b is not None and not args.text_b.strip():
        raise LmlabError("--text-b is empty; give a second sentence or drop --text-b")
    if args.generate < 0:
        raise LmlabError(f"--generate must be 0 or more tokens, got {args.generate}")
    positive(args.max_tokens, "--max-tokens")
    if args.png:
        require_optional("matplotlib", "viz", "the heat-map grid (--png)")
    from lmlab.viz.attention_view import write_attention_view

    run = load_run(args.model, err)
    trace = trace_attention(
        run.model, run.tokenizer, args.text, text_b=args.text_b, generate_tokens=args.generate,
        decoder_start_id=_decoder_start(run.checkpoint, run.tokenizer), layers=args.layers, heads=args.heads,
        max_tokens=args.max_tokens,
    )
    data = trace.as_dict()
    out = write_attention_view(data, args.out, f"Attention of {Path(args.model).name}", args.view)
    print(f"wrote {out}")
    if args.png:
        from lmlab.viz.attention_png import plot_attention_grid

        print(f"wrote {plot_attention_grid(data, args.png)}")
    return 0


def _indices(text: str) -> list[int]:
    """An argparse type: "0,3" → [0, 3]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number, such as 0 or 0,3")
    return values


def add_attention_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("attention", help="attention views (head, model, neuron) of a model over a text, as HTML")
    parser.add_argument("model", help="an lmlab run, a Hugging Face directory (GPT-2, BERT, RoBERTa, Llama, T5, BART) "
                                      "or a GGUF file")
    parser.add_argument("--text", required=True, help="the text (an encoder-decoder's input)")
    parser.add_argument("--text-b", help="a second sentence (encoders: a sentence pair, filtered A→B / B→A); "
                                         "an encoder-decoder decodes it as its output")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="first generate N tokens greedily and show attention over them too (default 0)")
    parser.add_argument("--view", choices=["head", "model", "neuron"], default="head", help="the view the page opens on")
    parser.add_argument("--layers", type=_indices, help="layers to show, e.g. 0,3 (default: all)")
    parser.add_argument("--heads", type=_indices, help="heads to show, e.g. 1,2 (default: all)")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"longest token list the view draws (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--png", help="also write a PNG grid of heat maps (layers × heads)")
    parser.set_defaults(func=cmd_attention)
