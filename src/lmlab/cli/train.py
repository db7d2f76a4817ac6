"""``lmlab train``, ``lmlab eval`` and ``lmlab info``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lmlab.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, err, positive
from lmlab.errors import LmlabError

DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"


# ----------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return _launch_torchrun(args)
    from lmlab.training import distributed
    from lmlab.training.config import apply_overrides, load_config_file, load_preset
    from lmlab.training.run import make_trainer, resume_config

    out = Path(args.out or f"runs/{args.preset or (Path(args.config).stem if args.config else 'shakespeare-char')}")
    if args.resume and not (args.preset or args.config):
        config = resume_config(out, err)
    elif args.config:
        config = load_config_file(args.config)
    else:
        config = load_preset(args.preset or "shakespeare-char")
    objective = [f"train.objective={args.objective}"] if args.objective else []
    apply_overrides(config, objective + [item for group in args.set for item in group])
    _apply_train_flags(config, args)
    trainer, tokenizer = make_trainer(config, out, resume=args.resume, progress=not args.no_progress, echo=err)
    result = trainer.fit()
    if trainer.processes.is_main:
        print(json.dumps({"run_dir": str(out), "step": result.step, "stop_reason": result.stop_reason,
                          **{f"val_{k}": v for k, v in (result.last_eval or {}).items() if k != "step"},
                          **result.report}))
        if config.train.sample_chars > 0 and result.stop_reason != "interrupted" and config.model.backbone == "decoder":
            _print_sample(_whole_model(trainer, result.checkpoint), tokenizer, config)
    distributed.leave()
    return EXIT_INTERRUPTED if result.stop_reason == "interrupted" else 0


def _whole_model(trainer, checkpoint: Path):
    """The trained model in one piece: a run of many processes reads it back from its last
    (sharded) checkpoint."""
    if not trainer.processes.distributed:
        return trainer.model
    from lmlab.training.run import load_run

    return load_run(checkpoint, err).model


def _launch_torchrun(args: argparse.Namespace) -> int:
    """``lmlab train --nproc N ...``: the same command in N local processes under torchrun
    (``torch.distributed.run --standalone``, bound to this machine, through
    :mod:`lmlab.training.launch`). A process that stopped on a user mistake has printed its
    error line; this one then ends with one line too (exit 2). Otherwise: the processes' exit code."""
    positive(args.nproc, "--nproc")
    most, what = _most_local_processes(args.device)
    if args.nproc > most:
        raise LmlabError(f"--nproc {args.nproc} is more processes than this machine has {what} ({most}); "
                         f"use --nproc {most} or fewer")
    command = [sys.executable, "-m", "lmlab.training.launch", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "lmlab", "train", *_forwarded_train_args(args)]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches torchrun and the processes
    try:
        code = subprocess.run(command, check=False).returncode
    finally:
        signal.signal(signal.SIGINT, previous)
    if code == EXIT_USAGE:
        raise LmlabError(f"the {args.nproc} training processes under torchrun stopped; the error is printed above")
    return code


def _most_local_processes(device: str | None) -> tuple[int, str]:
    """How many processes this machine trains in, and of what: one per CUDA device for a CUDA
    run (``--device cuda``, or auto where CUDA is available), else one per CPU core."""
    import torch

    cuda = (device or "auto") in ("auto", "cuda") or (device or "").startswith("cuda:")
    if cuda and torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA devices"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1, "CPU cores"


def _forwarded_train_args(args: argparse.Namespace) -> list[str]:
    """The arguments of ``lmlab train`` as given, but for ``--nproc``."""
    forwarded: list[str] = []
    for flag, value in (("--preset", args.preset), ("--config", args.config), ("--data", args.data),
                        ("--out", args.out), ("--max-steps", args.max_steps), ("--max-time", args.max_time),
                        ("--seed", args.seed), ("--objective", args.objective), ("--device", args.device)):
        if value is not None:
            forwarded += [flag, str(value)]
    for group in args.set:
        forwarded += ["--set", *group]
    forwarded += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
    return forwarded


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
        config.train.max_steps = positive(args.max_steps, "--max-steps")
    if args.max_time is not None:
        config.train.max_time = positive(args.max_time, "--max-time")
    if args.seed is not None:
        config.train.seed = args.seed
    if args.device is not None:
        config.train.device = args.device


# ----------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from lmlab.training.devices import inputs_on_model_device
    from lmlab.training.finetuned import is_finetuned
    from lmlab.training.run import evaluate_run, load_run

    positive(args.batch_size, "--batch-size")
    if args.data is not None and args.split is not None:
        raise LmlabError("--split picks part of the run's own corpus; a --data corpus is scored whole, so drop one of them")
    split = args.split or "val"
    run = load_run(args.run_dir, err, device=args.device)
    if is_finetuned(run):
        with inputs_on_model_device(run.model):
            return _eval_finetuned(run, args)
    if args.confusion_png is not None:
        raise LmlabError("--confusion-png is for runs fine-tuned with --task classify; drop it for this run")
    metrics = evaluate_run(run, args.data, split, args.batch_size, progress=not args.no_progress)
    scored = {"data": args.data, "split": "all"} if args.data is not None else {"split": split}
    if metrics["tokens"] == 0:
        raise LmlabError(f"{args.data or f'the {split} split'} is too short to evaluate; use more text")
    print(json.dumps({**metrics, **scored, "checkpoint": str(run.checkpoint)}))
    return 0


def _eval_finetuned(run, args: argparse.Namespace) -> int:
    """A fine-tuned run's task metrics on --data (default: its validation file)."""
    from lmlab.training.finetuned import FinetunedRun, evaluate_finetuned
    from lmlab.viz.confusion import plot_confusion_matrix, require_matplotlib

    tuned = FinetunedRun(run, run.state["finetune"])
    data = args.data or tuned.settings.val
    if data is None:
        raise LmlabError("pass --data FILE: this fine-tuned run was validated on a split of its training data")
    if args.confusion_png is not None:
        tuned.require_task("classify", "--confusion-png")
        require_matplotlib()
    metrics = evaluate_finetuned(tuned, data)
    if args.confusion_png is not None:
        err(f"wrote {plot_confusion_matrix(metrics['confusion_matrix'], metrics['labels'], args.confusion_png)}")
    print(json.dumps({**metrics, "data": str(data), "checkpoint": str(run.checkpoint)}))
    return 0


# ----------------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from lmlab.models import parameter_counts
    from lmlab.training.run import describe_model, load_run

    run = load_run(args.run_dir, err)
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


# ----------------------------------------------------------------------------------- parsers
def add_train_parser(sub: argparse._SubParsersAction) -> None:
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
    train.add_argument("--device", help=DEVICE_HELP + " (sets train.device; default auto)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--nproc", type=int, help="train in N local processes under torchrun "
                       "(with --set train.distributed=ddp or fsdp)")
    train.set_defaults(func=cmd_train)


def add_eval_info_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="loss, perplexity and accuracy on a corpus split")
    ev.add_argument("run_dir")
    ev.add_argument("--data", help="a corpus to score whole (default: a split of the run's own corpus)")
    ev.add_argument("--split", choices=("val", "train"), help="the split of the run's own corpus (default: val)")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--confusion-png", help="a fine-tuned classifier: also save the confusion matrix as this PNG")
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="config, parameter count and training state of a run")
    info.add_argument("run_dir")
    info.set_defaults(func=cmd_info)
