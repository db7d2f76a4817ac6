"""``lmlab plot``, ``lmlab embeddings`` and ``lmlab probs``: figures of runs, embeddings and
next-token probabilities. Each writes its picture and, beside it, the numbers it drew (``.json``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lmlab.cli.common import err, positive, unescaped
from lmlab.errors import LmlabError, read_text_file, require_optional

EMBEDDING_OUTPUTS = (".png", ".html")


def cmd_plot(args: argparse.Namespace) -> int:
    out = _output(args.out, (".png",))
    require_optional("matplotlib", "viz", "lmlab plot")
    from lmlab.training.metrics_log import run_curves
    from lmlab.viz.numbers import write_numbers
    from lmlab.viz.run_plots import plot_run_curves

    metrics = _names(args.metric, "--metric")
    runs = {label: run_curves(path, metrics, args.x) for label, path in zip(run_labels(args.runs), args.runs)}
    x_label = "step" if args.x == "step" else "seconds"
    plot_run_curves(runs, metrics, x_label, out)
    numbers = {"x": args.x, "metrics": metrics, "runs": {
        label: {metric: {name: {"x": xs, "y": ys} for name, (xs, ys) in series.items()} for metric, series in curves.items()}
        for label, curves in runs.items()}}
    err(f"wrote {out} and {write_numbers(numbers, out)}")
    return 0


def run_labels(paths: list[str]) -> list[str]:
    """Each run's legend label: its directory name, or the path as given when two names clash."""
    names = [Path(p).resolve().name for p in paths]
    return [name if names.count(name) == 1 else path for name, path in zip(names, paths)]


def cmd_embeddings(args: argparse.Namespace) -> int:
    out = _output(args.out, EMBEDDING_OUTPUTS)
    require_optional("matplotlib", "viz", "lmlab embeddings")
    from lmlab.interop.embeddings import nearest_neighbours, pca_2d
    from lmlab.viz.embedding_map import plot_embedding_map_png, write_embedding_map_html
    from lmlab.viz.numbers import write_numbers

    items = list(args.words or [])
    if args.file:
        items += [line.strip() for line in read_text_file(args.file, "write one word or text per line").splitlines() if line.strip()]
    if len(items) < 2:
        raise LmlabError(f"an embedding map needs at least two words or texts, got {len(items)}; pass more with --words or --file")
    kind, vectors = _embed(args, items)
    points = pca_2d(vectors).tolist()  # (N, 2)
    neighbours = [[{"label": items[j], "similarity": round(s, 6)} for j, s in row]
                  for row in nearest_neighbours(vectors, positive(args.neighbours, "--neighbours"))]
    numbers = {"title": f"{kind} embeddings of {args.model} (PCA)", "kind": kind,
               "points": [{"label": item, "x": x, "y": y} for item, (x, y) in zip(items, points)],
               "neighbours": neighbours}
    for item, near in zip(items, neighbours):
        print(f"{item}\t" + ", ".join(f"{n['label']} ({n['similarity']:.3f})" for n in near))
    if out.suffix == ".html":
        write_embedding_map_html(numbers, out)
    else:
        plot_embedding_map_png(items, points, numbers["title"], out)
    err(f"wrote {out} and {write_numbers(numbers, out)}")
    return 0


def _embed(args: argparse.Namespace, items: list[str]):
    """("text", sentence embeddings) for a sentence-transformers directory; otherwise ("token",
    the mean token embedding of each word) of any model ``lmlab`` loads."""
    from lmlab.interop.embeddings import is_sentence_encoder_dir, load_sentence_encoder, word_vectors
    from lmlab.interop.hub import resolve_model_path
    from lmlab.training.run import load_run

    path = resolve_model_path(args.model)
    if is_sentence_encoder_dir(path):
        return "text", load_sentence_encoder(path).encode(items)
    run = load_run(path, err)
    if run.tokenizer is None:
        raise LmlabError(f"{args.model} has no tokenizer; the embedding map needs one to find each word's tokens")
    return "token", word_vectors(run.model, run.tokenizer, items)


def cmd_probs(args: argparse.Namespace) -> int:
    out = _output(args.out, (".png",))
    require_optional("matplotlib", "viz", "lmlab probs")
    from lmlab.generation.next_token import next_token_distributions, next_token_logits
    from lmlab.training.run import load_run
    from lmlab.viz.numbers import write_numbers
    from lmlab.viz.probability_plots import plot_next_token_figure

    temperatures = [_finite(float(t), "--temperatures") for t in _names(args.temperatures, "--temperatures", float)]
    top_n = positive(args.top_n, "--top-n")
    run = load_run(args.model, err, device=args.device)
    if run.tokenizer is None:
        raise LmlabError(f"{args.model} has no tokenizer; the next-token figure needs one to read the prompt")
    prompt_ids = run.tokenizer.encode(args.prompt)
    report = next_token_distributions(next_token_logits(run.model, prompt_ids), temperatures, args.top_k, args.top_p)
    numbers = report.figure_numbers(run.tokenizer.decode, top_n)
    plot_next_token_figure(numbers["temperatures"], numbers["cumulative"], args.prompt, out)
    for bar in numbers["temperatures"]:
        shown = ", ".join(f"{t!r} {p:.3f}" for t, p in list(zip(bar["tokens"], bar["probs"]))[:5])
        print(f"temperature {bar['temperature']:g}: {shown}")
    err(f"wrote {out} and {write_numbers({'prompt': args.prompt, **numbers}, out)}")
    return 0


def _output(out: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise LmlabError(f"--out {out}: the picture must end in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise LmlabError(f"--out {out}: the directory {path.parent} does not exist; create it first")
    return path


def _names(value: str, flag: str, kind=str) -> list:
    try:
        items = [kind(item.strip()) for item in value.split(",") if item.strip()]
    except ValueError:
        raise LmlabError(f"{flag} {value!r}: give comma-separated numbers, e.g. 0.5,1,2") from None
    if not items:
        raise LmlabError(f"{flag} is empty; give comma-separated values")
    return items


def _finite(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise LmlabError(f"{flag} must hold finite numbers, got {value}")
    return value


def add_figure_parsers(sub: argparse._SubParsersAction) -> None:
    from lmlab.cli.train import DEVICE_HELP

    plot = sub.add_parser("plot", help="training curves of one or more runs (PNG + JSON)")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories written by 'lmlab train'")
    plot.add_argument("--out", required=True, help="the PNG to write (the numbers go beside it as .json)")
    plot.add_argument("--metric", default="val_loss",
                      help="comma-separated metrics of metrics.jsonl, one panel each (default val_loss), "
                           "e.g. loss,val_loss,lr,tokens_per_s,moe_load")
    plot.add_argument("--x", choices=("step", "time"), default="step", help="x axis: optimizer step or seconds")
    plot.set_defaults(func=cmd_plot)

    emb = sub.add_parser("embeddings", help="2-D PCA map of token or sentence embeddings (PNG or HTML + JSON)")
    emb.add_argument("model", help="a run, HF directory, Hub id or GGUF file; a sentence-transformers directory embeds texts")
    words = emb.add_mutually_exclusive_group(required=True)
    words.add_argument("--words", nargs="+", help="the words (or texts) to place; a word of several tokens gets their mean")
    words.add_argument("--file", help="a UTF-8 file with one word or text per line")
    emb.add_argument("--out", required=True, help="map.png or map.html (zoom, labels on hover); numbers beside it as .json")
    emb.add_argument("--neighbours", type=int, default=5, help="nearest neighbours listed per item (default 5)")
    emb.set_defaults(func=cmd_embeddings)

    probs = sub.add_parser("probs", help="the next-token distribution at several temperatures, with top-k/top-p cut-offs")
    probs.add_argument("model", help="a decoder: run directory, HF directory, Hub id or GGUF file")
    probs.add_argument("--prompt", required=True, type=unescaped, help="the text before the next token")
    probs.add_argument("--out", required=True, help="the PNG to write (the numbers go beside it as .json)")
    probs.add_argument("--temperatures", default="0.5,1,2", help="comma-separated temperatures (default 0.5,1,2)")
    probs.add_argument("--top-k", type=int, default=50, help="the top-k cut-off to mark (default 50)")
    probs.add_argument("--top-p", type=float, default=0.9, help="the top-p cut-off to mark (default 0.9)")
    probs.add_argument("--top-n", type=int, default=20, help="bars per temperature (default 20)")
    probs.add_argument("--device", default="cpu", help=DEVICE_HELP)
    probs.set_defaults(func=cmd_probs)
