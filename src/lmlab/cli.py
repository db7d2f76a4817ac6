"""The ``lmlab`` command. Each subcommand is a thin function over the packages.

Every user mistake (bad value, missing file, corrupt checkpoint, unknown preset, ...) prints one
line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from lmlab.errors import LmlabError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise LmlabError(f"{message} (see '{self.prog} --help')")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from lmlab.training.config import apply_overrides, load_config_file, load_preset
    from lmlab.training.run import make_trainer, resume_config

    out = Path(args.out or f"runs/{args.preset or (Path(args.config).stem if args.config else 'shakespeare-char')}")
    if args.resume and not (args.preset or args.config):
        config = resume_config(out, _err)
    elif args.config:
        config = load_config_file(args.config)
    else:
        config = load_preset(args.preset or "shakespeare-char")
    objective = [f"train.objective={args.objective}"] if args.objective else []
    apply_overrides(config, objective + [item for group in args.set for item in group])
    _apply_train_flags(config, args)
    trainer, tokenizer = make_trainer(config, out, resume=args.resume, progress=not args.no_progress, echo=_err)
    result = trainer.fit()
    print(json.dumps({"run_dir": str(out), "step": result.step, "stop_reason": result.stop_reason,
                      **{f"val_{k}": v for k, v in (result.last_eval or {}).items() if k != "step"}}))
    if config.train.sample_chars > 0 and result.stop_reason != "interrupted" and config.model.backbone == "decoder":
        _print_sample(trainer.model, tokenizer, config)
    return EXIT_INTERRUPTED if result.stop_reason == "interrupted" else 0


def _print_sample(model, tokenizer, config) -> None:
    """A short sample from a freshly trained decoder, starting after a newline."""
    from lmlab.generation import GenerationConfig, generate

    prompt = tokenizer.encode("\n") if tokenizer.token_to_id("\n") is not None else [0]
    sample = GenerationConfig(max_new_tokens=config.train.sample_chars, strategy="sample",
                              temperature=0.8, top_k=50, seed=config.train.seed)
    model.eval()
    print("--- sample ---")
    print(tokenizer.decode(generate(model, prompt, sample)))


def _apply_train_flags(config, args: argparse.Namespace) -> None:
    if args.data is not None:
        config.data.corpus = args.data
    if args.max_steps is not None:
        config.train.max_steps = _positive(args.max_steps, "--max-steps")
    if args.max_time is not None:
        config.train.max_time = _positive(args.max_time, "--max-time")
    if args.seed is not None:
        config.train.seed = args.seed
    for name in ("batch_size", "max_steps", "eval_every", "checkpoint_every", "keep_checkpoints", "grad_accum"):
        if getattr(config.train, name) < 1:
            raise LmlabError(f"train.{name} must be at least 1, got {getattr(config.train, name)}")
    if not config.train.lr > 0:
        raise LmlabError(f"train.lr must be positive, got {config.train.lr}")


def _positive(value, flag: str):
    if not value > 0:
        raise LmlabError(f"{flag} must be positive, got {value}")
    return value


# ----------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from lmlab.generation import GenerationConfig, generate_batch, generate_seq2seq
    from lmlab.generation.generate import fit_prompt
    from lmlab.generation.scoring import format_alternatives, score_continuation, top_alternatives
    import torch

    from lmlab.generation import stream_tokens
    from lmlab.generation.streaming import TextStreamer
    from lmlab.training.run import load_run

    if args.show_alternatives is not None and args.show_alternatives < 1:
        raise LmlabError(f"--show-alternatives must be at least 1, got {args.show_alternatives}")
    prompts = _batch_prompts(args.batch_file) if args.batch_file else [args.prompt]
    run = load_run(args.run_dir, _err)
    tokenizer, model = run.tokenizer, run.model
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    eos = tokenizer.special_tokens.get("eos")
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams if args.num_beams is not None else (4 if args.strategy == "beam" else 1),
        length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        num_return_sequences=args.num_return_sequences, eos_ids=(eos,) if eos is not None else (),
        stop=tuple(args.stop), seed=args.seed, prompt_overflow="truncate" if args.truncate_prompt else "error",
    )
    config.validate()
    encoded = [tokenizer.encode(p) for p in prompts]
    seq2seq = hasattr(model, "encode") and hasattr(model, "decode")
    max_positions = getattr(model, "max_positions", None)
    for ids in encoded:  # fail before printing anything
        fit_prompt(ids, max_positions, config.prompt_overflow)
    single = len(prompts) == 1 and config.num_return_sequences == 1 and config.strategy != "beam" and not seq2seq
    if args.stream and not single:
        raise LmlabError("--stream prints one sequence as it is made; it does not combine with beam search, "
                         "--batch-file, --num-return-sequences or encoder-decoder models")
    if args.show_alternatives is not None:
        if seq2seq or len(prompts) > 1:
            raise LmlabError("--show-alternatives needs a decoder-only model and one prompt")
        rows = top_alternatives(model, encoded[0], min(config.max_new_tokens, (max_positions or 10**9) - len(encoded[0])),
                                args.show_alternatives)
        print(format_alternatives(rows, tokenizer.decode))
        return 0
    if single:
        sys.stdout.write(prompts[0])
        streamer = TextStreamer(tokenizer.decode, config.stop)
        for token in stream_tokens(model, encoded[0], config):
            sys.stdout.write(streamer.push(token))
            sys.stdout.flush()
            if streamer.stopped:
                break
        sys.stdout.write(streamer.flush() + "\n")
        prompt_ids = fit_prompt(encoded[0], max_positions, config.prompt_overflow)
        if args.score and streamer.ids and len(prompt_ids) + len(streamer.ids) <= (max_positions or 10**9):
            _print_score(score_continuation(model, prompt_ids, streamer.ids))
        elif args.score:
            _err("lmlab: note: no log-probability: nothing was generated, or it ran past the model's context")
        return 0
    if seq2seq:
        start = _decoder_start(args.run_dir, tokenizer)
        out = generate_seq2seq(model, encoded, config, start, tokenizer.special_tokens.get("pad", 0))
    else:
        out = generate_batch(model, encoded, config, tokenizer.special_tokens.get("pad", 0))
    n = config.num_return_sequences
    for index, ids in enumerate(out.sequences):
        prompt = prompts[index // n]
        text = _cut_at_stop(tokenizer.decode(ids), config.stop)
        header = f"=== prompt {index // n + 1}" + (f", sequence {index % n + 1}" if n > 1 else "")
        if out.scores is not None:
            header += f" (beam score {out.scores[index]:.4f})"
        print(header + " ===")
        print(text if seq2seq else prompt + text)
        if args.score and not seq2seq and ids:
            _print_score(score_continuation(model, encoded[index // n], ids))
    return 0


def _batch_prompts(path: str) -> list[str]:
    lines = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise LmlabError(f"{path} has no prompts; write one prompt per line")
    return prompts


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def _decoder_start(run_dir: str, tokenizer) -> int:
    """The encoder-decoder's first decoder token: config.json's decoder_start_token_id, else the
    tokenizer's bos / eos / pad."""
    config = Path(run_dir) / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("decoder_start_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            value = None
        if isinstance(value, int):
            return value
    special = tokenizer.special_tokens
    for role in ("bos", "eos", "pad"):
        if role in special:
            return special[role]
    return 0


def _print_score(score) -> None:
    print(f"log-probability: {score.logprob:.4f} over {len(score.per_token)} tokens "
          f"(perplexity {score.perplexity:.4f})")


def cmd_score(args: argparse.Namespace) -> int:
    from lmlab.generation.scoring import score_continuation
    from lmlab.training.run import load_run

    run = load_run(args.run_dir, _err)
    if hasattr(run.model, "encode") and hasattr(run.model, "decode"):
        raise LmlabError("score works with decoder-only models")
    prompt = run.tokenizer.encode(args.prompt)
    continuation = run.tokenizer.encode(args.continuation)
    score = score_continuation(run.model, prompt, continuation)
    print(json.dumps({"logprob": score.logprob, "tokens": len(score.per_token), "perplexity": score.perplexity,
                      "per_token": score.per_token}))
    return 0


# ----------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from lmlab.training.run import evaluate_run, load_run

    _positive(args.batch_size, "--batch-size")
    run = load_run(args.run_dir, _err)
    metrics = evaluate_run(run, args.data, args.split, args.batch_size)
    if metrics["tokens"] == 0:
        raise LmlabError(f"the {args.split} split is too short to evaluate; use more text")
    print(json.dumps({**metrics, "split": args.split, "checkpoint": str(run.checkpoint)}))
    return 0


# ----------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from lmlab.models import parameter_counts
    from lmlab.training.run import describe_model, load_run

    run = load_run(args.run_dir, _err)
    state = run.state
    info = {
        "checkpoint": str(run.checkpoint),
        "model": {**describe_model(run.model, run.config.model), "parameter_counts": parameter_counts(run.model)},
        "tokenizer": {"kind": run.tokenizer.kind, "vocab_size": run.tokenizer.vocab_size},
        "training": {"step": state.get("step"), "max_steps": run.config.train.max_steps,
                     "elapsed_s": state.get("elapsed_s"), "last_eval": state.get("last_eval")},
        "config": run.config.to_dict(),
    }
    print(json.dumps(info, indent=2))
    return 0


# ----------------------------------------------------------------------------------- compare
def cmd_compare(args: argparse.Namespace) -> int:
    from lmlab.training.compare import markdown_table, parse_grid, run_comparison, set_budget, write_tables
    from lmlab.training.config import apply_overrides, load_config_file, load_preset
    from lmlab.viz.curves import plot_validation_curves

    config = load_config_file(args.config) if args.config else load_preset(args.preset or "shakespeare-char")
    apply_overrides(config, [item for group in args.set for item in group])
    if args.data is not None:
        config.data.corpus = args.data
    max_steps = None if args.max_steps is None else _positive(args.max_steps, "--max-steps")
    max_time = None if args.max_time is None else _positive(args.max_time, "--max-time")
    set_budget(config, max_steps, max_time)
    results = run_comparison(config, parse_grid(args.grid), args.out, echo=_err, progress=not args.no_progress)
    md_path, csv_path = write_tables(results, args.out)
    plot = plot_validation_curves({r.name: r.curve for r in results}, Path(args.out) / "val_loss.png")
    print(markdown_table(results), end="")
    _err(f"wrote {md_path}, {csv_path} and {plot}")
    return 0


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
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


# ----------------------------------------------------------------------------------- tokenizer
_ENCODE_BATCH_LINES = 1024


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from lmlab.data.corpora import load_corpus
    from lmlab.tokenizers import train_tokenizer
    from lmlab.tokenizers.hf import HF_TOKENIZER_FILE

    data = Path(args.data).expanduser()
    texts = [data] if data.is_file() else iter(load_corpus(args.data).splitlines(keepends=True))
    tokenizer = train_tokenizer(args.kind, texts, args.vocab_size, min_frequency=args.min_frequency)
    out = Path(args.out)
    tokenizer.save(out)
    tokenizer.backend.save(str(out / HF_TOKENIZER_FILE))
    print(json.dumps({"out": str(out), "kind": args.kind, "vocab_size": tokenizer.vocab_size}))
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from itertools import islice

    from lmlab.tokenizers import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    while lines := list(islice(sys.stdin, _ENCODE_BATCH_LINES)):
        texts = [line.removesuffix("\n").removesuffix("\r") for line in lines]
        for ids in tokenizer.encode_batch(texts):
            print(" ".join(map(str, ids)))
    return 0


def cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    from lmlab.tokenizers import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    for number, line in enumerate(sys.stdin, start=1):
        print(tokenizer.decode(_parse_ids(line, number)))
    return 0


def _parse_ids(line: str, number: int) -> list[int]:
    try:
        return [int(word) for word in line.split()]
    except ValueError:
        raise LmlabError(
            f"stdin line {number} is not space-separated integer ids: {line.strip()[:60]!r}"
        ) from None


# ----------------------------------------------------------------------------------- data
def cmd_data_prepare(args: argparse.Namespace) -> int:
    import time

    from lmlab.data.shards import prepare_shards
    from lmlab.tokenizers import resolve_tokenizer

    tokenizer = resolve_tokenizer(args.tokenizer)
    sizes = {} if args.shard_tokens is None else {"shard_tokens": _positive(args.shard_tokens, "--shard-tokens")}
    start = time.perf_counter()
    index = prepare_shards(
        tokenizer, args.data[0] if len(args.data) == 1 else args.data, args.out,
        doc_separator=None if args.separator == "none" else args.separator,
        documents=args.documents, **sizes,
    )
    seconds = time.perf_counter() - start
    print(json.dumps({
        "out": str(args.out), "tokens": index.total_tokens, "shards": len(index.shards),
        "documents": index.documents, "dtype": index.dtype, "seconds": round(seconds, 3),
        "mb_per_s": round(index.source_bytes / 1e6 / seconds, 3),
    }))
    return 0


# ----------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmlab", description="Train, run and inspect Transformer language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model (default: the Shakespeare character model)")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a preset shipped with lmlab (e.g. shakespeare-char, nanogpt-cpu)")
    source.add_argument("--config", help="a YAML file with model/train/data sections")
    train.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                       help="override config fields, e.g. --set model.n_layer=6 train.lr=1e-3")
    train.add_argument("--data", help="corpus name (shakespeare, tinyshakespeare) or a file, directory or glob")
    train.add_argument("--out", help="run directory (default: runs/PRESET)")
    train.add_argument("--max-steps", type=int, help="number of optimizer steps (the schedule's horizon)")
    train.add_argument("--max-time", type=float, help="stop after this many seconds of training")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest good checkpoint")
    train.add_argument("--seed", type=int, help="seed for initialisation, batches and dropout")
    train.add_argument("--objective", help="causal-lm (default), prefix-lm, mlm, span-corruption, bart or ul2")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="continue a prompt with a trained model")
    gen.add_argument("run_dir", help="a run directory written by 'lmlab train' (or one checkpoint)")
    gen.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    gen.add_argument("--batch-file", help="a file with one prompt per line, generated as one left-padded batch")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--min-new-tokens", type=int, default=0, help="no EOS before this many new tokens")
    gen.add_argument("--strategy", default="sample", help="greedy, sample or beam")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--min-p", type=float)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--no-repeat-ngram-size", type=int, default=0)
    gen.add_argument("--num-beams", type=int, help="beams for --strategy beam (default 4)")
    gen.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob / length**this")
    gen.add_argument("--early-stopping", action="store_true", help="beam search stops once num-beams hypotheses end")
    gen.add_argument("--num-return-sequences", type=int, default=1)
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    gen.add_argument("--stream", action="store_true", help="print text as it is produced (the default for one sequence)")
    gen.add_argument("--show-alternatives", type=int, metavar="N",
                     help="print the greedy per-step table of the N most likely tokens instead")
    gen.add_argument("--score", action="store_true", help="also print each sequence's log-probability")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="weights and KV cache in this type (bfloat16: half the memory traffic)")
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--truncate-prompt", action="store_true",
                     help="keep the end of a prompt longer than the context instead of failing")
    gen.set_defaults(func=cmd_generate)

    score = sub.add_parser("score", help="log-probability and perplexity of a continuation given a prompt")
    score.add_argument("run_dir", help="a run directory, checkpoint, Hugging Face model directory or GGUF file")
    score.add_argument("--prompt", required=True)
    score.add_argument("--continuation", required=True)
    score.set_defaults(func=cmd_score)

    ev = sub.add_parser("eval", help="loss, perplexity and accuracy on a corpus split")
    ev.add_argument("run_dir")
    ev.add_argument("--data", help="corpus to evaluate on (default: the run's own)")
    ev.add_argument("--split", choices=("val", "train"), default="val")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="config, parameter count and training state of a run")
    info.add_argument("run_dir")
    info.set_defaults(func=cmd_info)
    _add_compare_parser(sub)

    _add_tokenizer_parser(sub)
    _add_data_parser(sub)
    _add_interop_parsers(sub)
    return parser


def _add_tokenizer_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train a tokenizer, or encode/decode text with one")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, parser_class=_Parser)
    train = tok_sub.add_parser("train", help="train a byte-level BPE or WordPiece tokenizer")
    train.add_argument("--kind", choices=("bpe", "wordpiece"), default="bpe")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--data", required=True,
                       help="a text file, a directory or glob, or a corpus name (tinyshakespeare)")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--out", required=True, help="directory for lmlab-tokenizer.json and tokenizer.json")
    train.set_defaults(func=cmd_tokenizer_train)
    for name, func, what in (("encode", cmd_tokenizer_encode, "text lines → space-separated ids"),
                             ("decode", cmd_tokenizer_decode, "space-separated ids → text lines")):
        command = tok_sub.add_parser(name, help=f"stdin → stdout: {what}")
        command.add_argument("--tokenizer", required=True,
                             help="a built-in name (chess-pgn), a saved tokenizer directory or a tokenizer.json")
        command.set_defaults(func=func)


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare training data")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prepare = data_sub.add_parser("prepare", help="tokenize a corpus into memory-mapped token shards")
    prepare.add_argument("--tokenizer", required=True,
                         help="a built-in name (chess-pgn), a saved tokenizer directory or a tokenizer.json")
    prepare.add_argument("--data", required=True, nargs="+",
                         help="text or .pgn/.pgn.zst files, a directory, a glob, or a corpus name")
    prepare.add_argument("--out", required=True, help="directory for index.json and the shards")
    prepare.add_argument("--shard-tokens", type=int, help="tokens per shard file (default 2^24)")
    prepare.add_argument("--documents", choices=("file", "line"), default="file",
                         help="what one document is: a whole file, or each non-blank line")
    prepare.add_argument("--separator", choices=("eos", "none"), default="eos",
                         help="token written between documents (default: the tokenizer's eos)")
    prepare.set_defaults(func=cmd_data_prepare)


# ----------------------------------------------------------------------------------- interop
def cmd_convert(args: argparse.Namespace) -> int:
    if args.to == "hf":
        from lmlab.interop.export import export_hf
        from lmlab.training.run import load_run

        run = load_run(args.src, _err)
        summary = export_hf(run.model, run.config.model, run.tokenizer, args.dst)
        for note in summary["notes"]:
            _err(f"note: {note}")
        print(json.dumps(summary))
        return 0
    from lmlab.interop.pretrained import load_pretrained
    from lmlab.tokenizers import tokenizer_to_json
    from lmlab.training.checkpoint import list_checkpoints, save_checkpoint
    from lmlab.training.config import RunConfig

    dst = Path(args.dst)
    if list_checkpoints(dst):
        raise LmlabError(f"{dst} already holds a run; choose another destination")
    loaded = load_pretrained(args.src)
    if loaded.tokenizer is None:
        raise LmlabError(f"{args.src} has no tokenizer files; copy the model's tokenizer there before converting")
    state = {"config": RunConfig(model=loaded.model_config).to_dict(), "tokenizer": tokenizer_to_json(loaded.tokenizer),
             "family": loaded.family, "source": str(args.src)}
    checkpoint = save_checkpoint(dst, 0, loaded.model, None, state)
    print(json.dumps({"run_dir": str(dst), "checkpoint": str(checkpoint), "family": loaded.family,
                      "parameters": sum(p.numel() for p in loaded.model.parameters())}))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from lmlab.interop.embeddings import cosine_similarity_matrix, load_sentence_encoder

    texts = list(args.text)
    if args.file:
        texts += [line.rstrip("\r\n") for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise LmlabError("nothing to embed; pass --text (repeatable) or --file")
    encoder = load_sentence_encoder(args.model)
    embeddings = encoder.encode(texts)
    if args.similarity:
        print(json.dumps({"similarity": cosine_similarity_matrix(embeddings).tolist()}))
        return 0
    for text, vector in zip(texts, embeddings.tolist()):
        print(json.dumps({"text": text, "embedding": vector}, ensure_ascii=False))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from lmlab.generation import GenerationConfig, stream_tokens
    from lmlab.training.run import load_run

    run = load_run(args.model, _err)
    tokenizer = run.tokenizer
    if getattr(tokenizer, "chat_template", None) is None or run.config.model.backbone != "decoder":
        raise LmlabError(f"{args.model} has no chat template (or is not a decoder); 'lmlab chat' needs a chat model")
    eos = tokenizer.special_tokens.get("eos")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    for line in sys.stdin:
        user = line.rstrip("\r\n")
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt = tokenizer.encode(prompt_text)
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, strategy=args.strategy,
                                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  seed=args.seed, prompt_overflow="truncate")
        reply_ids: list[int] = []
        printed = ""
        for token in stream_tokens(run.model, prompt, config):
            if token == eos:
                break
            reply_ids.append(token)
            text = tokenizer.decode(reply_ids, skip_special_tokens=True) if _decode_skips(tokenizer) else tokenizer.decode(reply_ids)
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": printed})
    return 0


def _decode_skips(tokenizer) -> bool:
    import inspect

    return "skip_special_tokens" in inspect.signature(tokenizer.decode).parameters


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="HF directory or GGUF file → lmlab run directory; or run → HF with --to hf")
    conv.add_argument("src", help="a Hugging Face model directory or a .gguf file (or, with --to hf, an lmlab run)")
    conv.add_argument("dst", help="the lmlab run directory to write (or, with --to hf, the HF directory)")
    conv.add_argument("--to", choices=("lmlab", "hf"), default="lmlab", help="direction (default: to lmlab)")
    conv.set_defaults(func=cmd_convert)

    emb = sub.add_parser("embed", help="sentence embeddings (JSON lines) from an encoder directory")
    emb.add_argument("model", help="a sentence-transformers or Hugging Face BERT/RoBERTa directory")
    emb.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    emb.add_argument("--file", help="a file with one text per line")
    emb.add_argument("--similarity", action="store_true", help="print the cosine-similarity matrix instead")
    emb.set_defaults(func=cmd_embed)

    chat = sub.add_parser("chat", help="chat with a model that has a chat template (user turns from stdin)")
    chat.add_argument("model", help="an HF directory, a .gguf file or a run directory with a chat template")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--strategy", default="greedy", help="greedy or sample")
    chat.add_argument("--temperature", type=float, default=1.0)
    chat.add_argument("--top-k", type=int)
    chat.add_argument("--top-p", type=float)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(func=cmd_chat)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmlab`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.func
        return handler(args)
    except LmlabError as exc:
        _err(f"lmlab: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("lmlab: interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        _err(f"lmlab: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
