"""``lmlab finetune``, ``lmlab classify`` and ``lmlab seq2seq``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lmlab.cli.common import EXIT_INTERRUPTED, err
from lmlab.errors import LmlabError

CONFUSION_PNG = "confusion_matrix.png"  # written into a classify run at the end of fine-tuning
SETTING_FLAGS = (  # FinetuneConfig fields set from flags of the same name
    "val", "val_fraction", "text_column", "label_column", "source_column", "target_column", "source_prefix",
    "prompt_format", "pooling", "epochs", "max_steps", "max_time", "batch_size", "max_tokens_per_batch", "lr",
    "warmup_steps", "weight_decay", "grad_clip", "seed", "eval_every", "early_stopping_patience",
    "checkpoint_every", "strategy", "num_beams", "max_new_tokens", "resume", "messages_column", "freeze",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
)


# ----------------------------------------------------------------------------------- finetune
def cmd_finetune(args: argparse.Namespace) -> int:
    from lmlab.training.finetune import FinetuneConfig, finetune

    given = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    config = FinetuneConfig(model=args.model, task=args.task, data=args.data, out=args.out,
                            truncate=not args.no_truncate, **given)
    result = finetune(config, progress=not args.no_progress, echo=err)
    if result.report is not None and result.stop_reason != "interrupted":
        _confusion_png(result.report, Path(args.out) / CONFUSION_PNG)
    print(json.dumps({"run_dir": args.out, **result.summary()}))
    return EXIT_INTERRUPTED if result.stop_reason == "interrupted" else 0


def _confusion_png(report: dict, path: Path) -> None:
    """The validation confusion matrix as a PNG in the run, when matplotlib is there (else a note)."""
    from lmlab.viz.confusion import plot_confusion_matrix, require_matplotlib

    try:
        require_matplotlib()
    except LmlabError as exc:
        err(f"note: no {path.name}: {exc}")
        return
    err(f"wrote {plot_confusion_matrix(report['confusion_matrix'], report['labels'], path)}")


# ----------------------------------------------------------------------------------- task commands
def _texts(args: argparse.Namespace) -> list[str]:
    """--text, or the non-empty lines of --file."""
    if args.text is not None:
        return [args.text]
    path = Path(args.file)
    if not path.is_file():
        raise LmlabError(f"no such file: {path}; check the path")
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise LmlabError(f"{path} holds no texts; write one text per line")
    return texts


def cmd_classify(args: argparse.Namespace) -> int:
    from lmlab.training.finetuned import classify_texts, load_finetuned

    tuned = load_finetuned(args.run_dir, err)
    texts = _texts(args)
    for text, prediction in zip(texts, classify_texts(tuned, texts)):
        print(json.dumps({"text": text, **prediction}, ensure_ascii=False))
    return 0


def cmd_seq2seq(args: argparse.Namespace) -> int:
    from lmlab.training.finetuned import generate_targets, load_finetuned, stream_target

    tuned = load_finetuned(args.run_dir, err)
    tuned.require_task("seq2seq", "seq2seq")
    settings = tuned.settings
    strategy = args.strategy or settings.strategy
    beams = args.num_beams or (settings.num_beams if strategy == settings.strategy else 4 if strategy == "beam" else 1)
    decoding = dataclasses.replace(settings, strategy=strategy, num_beams=beams,
                                   max_new_tokens=args.max_new_tokens or settings.max_new_tokens)
    generation = decoding.generation(tuned.spec["eos_id"])
    if args.text is not None:
        for piece in stream_target(tuned, args.text, generation):
            print(piece, end="", flush=True)
        print()
        return 0
    for output in generate_targets(tuned, _texts(args), generation):
        print(output)
    return 0


# ----------------------------------------------------------------------------------- parsers
def add_finetune_parsers(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a pretrained model on labelled data (classify, seq2seq, "
                                         "causal-lm, chat)")
    ft.add_argument("model", help="an lmlab run directory, a Hugging Face model directory or Hub id, or a .gguf file")
    ft.add_argument("--task", required=True, choices=("classify", "seq2seq", "causal-lm", "chat"))
    ft.add_argument("--data", required=True, help="training data: .csv, .tsv, .jsonl (or .txt files for causal-lm; "
                                                  ".jsonl conversations for chat)")
    ft.add_argument("--out", required=True, help="run directory")
    val = ft.add_mutually_exclusive_group()
    val.add_argument("--val", help="validation file (default: a seeded split of --data)")
    val.add_argument("--val-fraction", type=float, help="share of --data held out for validation (default 0.1)")
    for column in ("text", "label", "source", "target"):
        ft.add_argument(f"--{column}-column", help=f"column (JSON field) of the {column} (default: {column})")
    ft.add_argument("--messages-column", help="chat: JSON field of the conversation (default: messages)")
    ft.add_argument("--source-prefix", help="seq2seq: text put before every source, e.g. 'summarize: '")
    ft.add_argument("--prompt-format", help="seq2seq on a decoder: the prompt, e.g. '{source}\\nTL;DR: '")
    ft.add_argument("--pooling", choices=("cls", "mean"), help="classify: pooling of the new head")
    ft.add_argument("--epochs", type=int, help="passes over the data (default 3 without other budgets)")
    ft.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    ft.add_argument("--max-time", type=float, help="stop after this many seconds of training")
    size = ft.add_mutually_exclusive_group()
    size.add_argument("--batch-size", type=int, help="examples per batch (default 16)")
    size.add_argument("--max-tokens-per-batch", type=int, help="padded tokens per batch instead of a batch size")
    ft.add_argument("--lr", type=float, help="learning rate, constant after warm-up (default 5e-5)")
    ft.add_argument("--warmup-steps", type=int)
    ft.add_argument("--weight-decay", type=float)
    ft.add_argument("--grad-clip", type=float, help="gradient norm clip (0: off; default 1.0)")
    ft.add_argument("--seed", type=int, help="seed of the split, the batches and the new head (default 0)")
    ft.add_argument("--eval-every", type=int, help="evaluate every N steps (always at each epoch end)")
    ft.add_argument("--early-stopping-patience", type=int, help="stop after K evaluations without a better metric")
    ft.add_argument("--checkpoint-every", type=int)
    ft.add_argument("--strategy", choices=("greedy", "beam"), help="seq2seq validation decoding")
    ft.add_argument("--num-beams", type=int)
    ft.add_argument("--max-new-tokens", type=int, help="seq2seq: longest generated target (default 64)")
    ft.add_argument("--freeze", choices=("embeddings", "encoder", "all-but-head"), help="train the rest only")
    ft.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank instead of the weights")
    ft.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default 16; the update is alpha/rank)")
    ft.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input (default 0)")
    ft.add_argument("--lora-targets", help="projections to adapt, from q,k,v,o,ffn (default q,k,v,o)")
    ft.add_argument("--no-truncate", action="store_true", help="refuse texts longer than the model's context")
    ft.add_argument("--resume", action="store_true", default=None, help="continue the run in --out")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_finetune)

    for name, func, what in (("classify", cmd_classify, "label texts with a fine-tuned classifier (JSON lines)"),
                             ("seq2seq", cmd_seq2seq, "generate targets with a fine-tuned seq2seq run")):
        task = sub.add_parser(name, help=what)
        task.add_argument("run_dir")
        source = task.add_mutually_exclusive_group(required=True)
        source.add_argument("--text", help="one text")
        source.add_argument("--file", help="a file with one text per line")
        if name == "seq2seq":
            task.add_argument("--strategy", choices=("greedy", "beam"))
            task.add_argument("--num-beams", type=int)
            task.add_argument("--max-new-tokens", type=int)
        task.set_defaults(func=func)
