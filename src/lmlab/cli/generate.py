"""``lmlab generate`` and ``lmlab score``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmlab.cli.common import err, unescaped
from lmlab.cli.train import DEVICE_HELP
from lmlab.errors import LmlabError, read_json_file, read_text_file


# ----------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from lmlab.generation.loop import fit_prompt
    from lmlab.generation import strategy_for
    from lmlab.generation.scoring import format_alternatives, top_alternatives
    from lmlab.models.interface import is_encoder_decoder, require_generative
    from lmlab.training.run import load_run

    if args.show_alternatives is not None and args.show_alternatives < 1:
        raise LmlabError(f"--show-alternatives must be at least 1, got {args.show_alternatives}")
    prompts = _batch_prompts(args.batch_file) if args.batch_file else [args.prompt]
    run = load_run(args.run_dir, err, device=args.device)
    tokenizer, model = run.tokenizer, run.model
    if args.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    config = _generation_config(args, tokenizer)
    encoded = [tokenizer.encode(p) for p in prompts]
    require_generative(model)
    seq2seq = is_encoder_decoder(model)
    max_positions = model.max_positions
    for ids in encoded:  # fail before printing anything
        fit_prompt(ids, max_positions, config.prompt_overflow)
    whole = strategy_for(config).whole_sequences
    single = len(prompts) == 1 and config.num_return_sequences == 1 and not whole and not seq2seq
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
        _stream_one(args, model, tokenizer, prompts[0], encoded[0], config)
        return 0
    _print_sequences(args, run.checkpoint, model, tokenizer, prompts, encoded, config, seq2seq)
    return 0


def _generation_config(args: argparse.Namespace, tokenizer):
    """The validated GenerationConfig of the command line."""
    from lmlab.generation import STRATEGIES, GenerationConfig

    eos = tokenizer.special_tokens.get("eos")
    strategy = STRATEGIES.get(args.strategy)  # an unknown name is reported by validate()
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams if args.num_beams is not None else (strategy.default_beams if strategy else 1),
        length_penalty=args.length_penalty, early_stopping=args.early_stopping,
        num_return_sequences=args.num_return_sequences, eos_ids=(eos,) if eos is not None else (),
        stop=tuple(args.stop), seed=args.seed, prompt_overflow="truncate" if args.truncate_prompt else "error",
        draft_tokens=args.draft_tokens,
    )
    config.validate()
    return config


def _stream_one(args: argparse.Namespace, model, tokenizer, prompt: str, ids: list[int], config) -> None:
    """One decoder-only sequence, printed token by token as it is made."""
    from lmlab.generation import stream_tokens
    from lmlab.generation.loop import fit_prompt
    from lmlab.generation.scoring import score_continuation
    from lmlab.generation.streaming import TextStreamer

    max_positions = model.max_positions
    sys.stdout.write(prompt)
    streamer = TextStreamer(tokenizer.decode, config.stop)
    for token in stream_tokens(model, ids, config):
        sys.stdout.write(streamer.push(token))
        sys.stdout.flush()
        if streamer.stopped:
            break
    sys.stdout.write(streamer.flush() + "\n")
    prompt_ids = fit_prompt(ids, max_positions, config.prompt_overflow)
    if args.score and streamer.ids and len(prompt_ids) + len(streamer.ids) <= (max_positions or 10**9):
        _print_score(score_continuation(model, prompt_ids, streamer.ids))
    elif args.score:
        err("lmlab: note: no log-probability: nothing was generated, or it ran past the model's context")


def _print_sequences(args: argparse.Namespace, source: Path, model, tokenizer, prompts: list[str],
                     encoded: list[list[int]], config, seq2seq: bool) -> None:
    """A batch (or beams, or several return sequences) generated at once, printed with headers;
    ``source`` is the loaded checkpoint or model directory."""
    from lmlab.generation import generate_batch, generate_seq2seq
    from lmlab.generation.scoring import score_continuation

    if seq2seq:
        start = _decoder_start(source, tokenizer)
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


def _batch_prompts(path: str) -> list[str]:
    lines = read_text_file(path, "write one UTF-8 prompt per line").splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise LmlabError(f"{path} has no prompts; write one prompt per line")
    return prompts


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def _decoder_start(source: Path, tokenizer) -> int:
    """The encoder-decoder's first decoder token: config.json's decoder_start_token_id, else the
    tokenizer's bos / eos / pad."""
    config = source / "config.json"
    if config.is_file():
        value = read_json_file(config, "fix or re-download it", dict).get("decoder_start_token_id")
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


# ----------------------------------------------------------------------------------- score
def cmd_score(args: argparse.Namespace) -> int:
    from lmlab.generation.scoring import score_continuation
    from lmlab.models.interface import DECODER
    from lmlab.training.run import load_run

    run = load_run(args.run_dir, err, device=args.device)
    if run.model.structure != DECODER:
        raise LmlabError(f"score works with decoder-only models; {args.run_dir} holds an {run.model.structure} model")
    prompt = run.tokenizer.encode(args.prompt)
    continuation = run.tokenizer.encode(args.continuation)
    score = score_continuation(run.model, prompt, continuation)
    print(json.dumps({"logprob": score.logprob, "tokens": len(score.per_token), "perplexity": score.perplexity,
                      "per_token": score.per_token}))
    return 0


# ----------------------------------------------------------------------------------- parsers
def add_generate_parsers(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="continue a prompt with a trained model")
    gen.add_argument("run_dir", help="a run directory written by 'lmlab train' (or one checkpoint), a Hugging Face "
                                     "model directory or Hub id, or a GGUF file")
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
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT", type=unescaped,
                     help=r"stop at this text (repeatable); \n, \t, \r and \\ are a newline, tab, return and backslash")
    gen.add_argument("--stream", action="store_true", help="print text as it is produced (the default for one sequence)")
    gen.add_argument("--show-alternatives", type=int, metavar="N",
                     help="print the greedy per-step table of the N most likely tokens instead")
    gen.add_argument("--score", action="store_true", help="also print each sequence's log-probability")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="weights and KV cache in this type (bfloat16: half the memory traffic)")
    gen.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    gen.add_argument("--seed", type=int, help="makes sampling reproducible")
    gen.add_argument("--draft-tokens", type=int, default=6, metavar="K",
                     help="greedy or sampling, one sequence, float32 on CPU: an int8 copy of the model proposes K tokens "
                          "per step and the model keeps those it agrees with (same output, faster; 0: off)")
    gen.add_argument("--truncate-prompt", action="store_true",
                     help="keep the end of a prompt longer than the context instead of failing")
    gen.set_defaults(func=cmd_generate)

    score = sub.add_parser("score", help="log-probability and perplexity of a continuation given a prompt")
    score.add_argument("run_dir", help="a run directory, checkpoint, Hugging Face model directory or Hub id, or GGUF file")
    score.add_argument("--prompt", required=True)
    score.add_argument("--continuation", required=True)
    score.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    score.set_defaults(func=cmd_score)
