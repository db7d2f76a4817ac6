"""Train a preset (default: ``nanogpt-cpu``) on a corpus and report its speed and final loss.

    python benchmarks/train_nanogpt_cpu.py --data ../shared/data/tinyshakespeare.txt
    python benchmarks/train_nanogpt_cpu.py --data tinyshakespeare.txt --preset shakespeare-char --max-time 80

Prints one JSON line: ``ms_per_iter`` (median step time after warm-up), ``tokens_per_s``,
``val_loss`` (final, over the whole validation split), ``val_loss_20_batches`` (nanoGPT's
estimator: the mean over ``eval_batches`` random validation batches), ``wall_s``, and the ratios
against the peer. The peer is nanoGPT's own training script at the same configuration; nanoGPT is not an
installable package, so its figures are the reference measurement on a 2-core machine like
CI's: 36 ms/iter (≈21k tokens/s) and a final validation loss of 1.886.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from lmlab.evaluation import evaluate_lm
from lmlab.training.config import apply_overrides, load_preset
from lmlab.training.run import make_trainer

NANOGPT_MS_PER_ITER = 36.0
NANOGPT_TOKENS_PER_S = 21_000
NANOGPT_VAL_LOSS = 1.886
WARMUP_STEPS_IGNORED = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt (or a corpus name)")
    parser.add_argument("--preset", default="nanogpt-cpu")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-time", type=float)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = load_preset(args.preset)
    config.data.corpus = args.data
    config.train.sample_chars = 0
    config.train.checkpoint_every = 10**9
    if args.max_steps:
        config.train.max_steps = args.max_steps
    config.train.max_time = args.max_time
    apply_overrides(config, args.set)

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer, _ = make_trainer(config, out, progress=False)
        trainer.fit()
        wall = time.perf_counter() - start
    steady = trainer.step_seconds[WARMUP_STEPS_IGNORED:] or trainer.step_seconds
    ms_per_iter = 1000 * statistics.median(steady)
    tokens_per_s = trainer.task.tokens_per_batch * config.train.grad_accum / (ms_per_iter / 1000)
    val = evaluate_lm(trainer.model, trainer.task.val_tokens.sequential_windows(64, config.model.context_length))
    print(json.dumps({
        "preset": args.preset,
        "steps": trainer.step,
        "ms_per_iter": round(ms_per_iter, 2),
        "tokens_per_s": round(tokens_per_s),
        "val_loss": round(val["loss"], 4),
        "val_loss_20_batches": round(trainer.last_eval["loss"], 4),  # nanoGPT's own estimator
        "wall_s": round(wall, 1),
        "train_s": round(trainer.elapsed, 1),
        "speedup_vs_nanogpt": round(tokens_per_s / NANOGPT_TOKENS_PER_S, 3),
        "val_loss_vs_nanogpt": round(val["loss"] - NANOGPT_VAL_LOSS, 4),
    }))


if __name__ == "__main__":
    main()
