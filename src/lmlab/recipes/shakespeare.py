"""``shakespeare`` (Deep Learning with Python, ch. 15): the classic GRU character model against a
Transformer decoder, trained for the same wall-clock time with the same seed, character
vocabulary and split, then evaluated on the same held-out windows.

The report's table holds each arm's validation loss, next-character accuracy, parameters and
training tokens/s; samples continue one prompt (the start of the held-out text) at the chapter's
temperatures; ``curves.png`` overlays the validation curves.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lmlab.data.corpora import TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE_URL
from lmlab.data.windows import TokenSpan
from lmlab.evaluation import evaluate_lm
from lmlab.generation import GenerationConfig, generate
from lmlab.models import parameter_counts
from lmlab.recipes.base import DataSource, Recipe, RecipeContext, RecipeReport
from lmlab.tokenizers import Tokenizer
from lmlab.training.config import RunConfig, load_preset
from lmlab.training.devices import inputs_on_model_device
from lmlab.training.run import make_trainer
from lmlab.training.trainer import METRICS_FILE

ARMS = ("gru", "transformer")
TEMPERATURES = (0.2, 0.5, 1.0, 1.5)
PROMPT_CHARS = 40  # the prompt: the first characters of the held-out text
SAMPLE_CHARS = 200
EVAL_BATCH = 32
TRANSFORMER_POSITION = "rope"  # learns far faster in the first few hundred steps than learned positions
COLUMNS = ("arm", "val loss", "next-char accuracy", "parameters", "tokens/s", "steps")


@dataclass(frozen=True)
class Shapes:
    """The two models and the evaluation at one budget: both arms see the same context."""

    context_length: int
    batch_size: int
    gru_embedding: int
    gru_hidden: int
    gru_dropout: float
    n_layer: int
    n_head: int
    d_model: int
    warmup_steps: int  # few, so that the slower arm is not still warming up when its time ends
    eval_every: int
    eval_tokens: int | None  # held-out tokens scored at the end (None: the whole split)


# The GRU is the chapter's (embedding 256, 1024 units; half as wide at the small budget); the
# Transformer is the shakespeare-char preset's with rotary positions (small: two narrower layers;
# large: nanoGPT's GPU one).
SHAPES = {
    "small": Shapes(context_length=64, batch_size=16, gru_embedding=64, gru_hidden=512, gru_dropout=0.0,
                    n_layer=2, n_head=4, d_model=64, warmup_steps=10, eval_every=25, eval_tokens=8_192),
    "default": Shapes(context_length=64, batch_size=12, gru_embedding=256, gru_hidden=1024, gru_dropout=0.0,
                      n_layer=3, n_head=4, d_model=128, warmup_steps=50, eval_every=100, eval_tokens=32_768),
    "large": Shapes(context_length=256, batch_size=64, gru_embedding=256, gru_hidden=1024, gru_dropout=0.2,
                    n_layer=6, n_head=6, d_model=384, warmup_steps=100, eval_every=250, eval_tokens=None),
}


def arm_config(arm: str, shapes: Shapes, context: RecipeContext, corpus: Path) -> RunConfig:
    """The run config of ``arm``: the shakespeare-char preset's optimisation for both arms, the
    GRU or the Transformer as its model, the recipe's budget and seed."""
    config = load_preset("shakespeare-char")
    model, train = config.model, config.train
    model.context_length = shapes.context_length
    if arm == "gru":
        model.arch, model.n_layer = "gru", 1
        model.d_model, model.rnn_hidden, model.dropout = shapes.gru_embedding, shapes.gru_hidden, shapes.gru_dropout
    else:
        model.n_layer, model.n_head, model.d_model = shapes.n_layer, shapes.n_head, shapes.d_model
        model.position = TRANSFORMER_POSITION
    train.seed = context.seed
    train.batch_size = shapes.batch_size
    train.eval_every = shapes.eval_every
    train.eval_batches = 10
    train.checkpoint_every = 4 * shapes.eval_every  # an interrupted arm resumes from here
    train.keep_checkpoints = 1
    train.sample_chars = 0
    if context.arm_steps is None:
        train.max_time, train.max_steps = context.arm_seconds, 1_000_000
    else:
        train.max_time, train.max_steps = None, context.arm_steps
    train.warmup_steps = min(shapes.warmup_steps, max(1, train.max_steps // 10))
    config.data.corpus = str(corpus)
    return config


def heldout_metrics(model: nn.Module, val: TokenSpan, window: int, eval_tokens: int | None) -> dict[str, float]:
    """Loss and next-character accuracy over consecutive ``window``-token windows of the held-out
    split (its first ``eval_tokens`` tokens): the same windows for every arm."""
    batches = val.sequential_windows(EVAL_BATCH, window)
    if eval_tokens is not None:
        batches = itertools.islice(batches, max(1, eval_tokens // (EVAL_BATCH * window)))
    with inputs_on_model_device(model):
        metrics = evaluate_lm(model, batches)
    return {"val_loss": metrics["loss"], "accuracy": metrics["accuracy"], "eval_tokens": metrics["tokens"]}


def samples(model: nn.Module, tokenizer: Tokenizer, prompt: str, seed: int) -> dict[str, str]:
    """The prompt's continuation at each of :data:`TEMPERATURES`, by temperature."""
    model.eval()
    ids = tokenizer.encode(prompt)
    texts = {}
    for temperature in TEMPERATURES:
        config = GenerationConfig(max_new_tokens=SAMPLE_CHARS, strategy="sample", temperature=temperature,
                                  seed=seed, draft_tokens=0)
        texts[f"{temperature:g}"] = tokenizer.decode(generate(model, ids, config))
    return texts


def validation_curve(run_dir: Path) -> list[dict[str, float]]:
    """The run's validation points (step, elapsed_s, val_loss) from its metrics log."""
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()]
    return [{"step": r["step"], "elapsed_s": r["elapsed_s"], "val_loss": r["val_loss"]}
            for r in rows if r.get("kind") == "eval"]


def train_arm(arm: str, context: RecipeContext, shapes: Shapes, corpus: Path):
    """The ``train(run_dir, resume)`` function :meth:`RecipeContext.run_arm` calls for ``arm``."""

    def train(run_dir: Path, resume: bool) -> dict[str, Any]:
        config = arm_config(arm, shapes, context, corpus)
        context.save_arm_config(arm, config.to_dict())
        trainer, tokenizer = make_trainer(config, run_dir, resume=resume, progress=context.progress,
                                          echo=context.echo)
        result = trainer.fit()
        val = trainer.task.val_tokens
        prompt = tokenizer.decode(val.window(0, PROMPT_CHARS).tolist())
        metrics = {**heldout_metrics(trainer.model, val, shapes.context_length, shapes.eval_tokens),
                   "parameters": parameter_counts(trainer.model)["total"],
                   "tokens_per_s": result.report["tokens_per_s"], "steps": result.step,
                   "train_seconds": round(trainer.elapsed, 2), "vocab_size": tokenizer.vocab_size}
        return {"metrics": metrics, "prompt": prompt, "samples": samples(trainer.model, tokenizer, prompt, context.seed),
                "curve": validation_curve(run_dir)}

    return train


def samples_markdown(prompt: str, by_arm: dict[str, dict[str, str]]) -> str:
    """Each arm's samples at each temperature, in fenced blocks under the shared prompt."""
    parts = [f"Prompt (the start of the held-out text), {SAMPLE_CHARS} sampled characters each:", "",
             "```text", prompt, "```", ""]
    for arm, texts in by_arm.items():
        for temperature, text in texts.items():
            parts += [f"**{arm}, temperature {temperature}**", "", "```text", prompt + text, "```", ""]
    return "\n".join(parts)


def run(context: RecipeContext) -> RecipeReport:
    """Train both arms, evaluate them on the same held-out windows, sample, plot and report."""
    from lmlab.viz.curves import plot_validation_curves

    shapes = SHAPES[context.budget]
    corpus = context.data_path().resolve()
    arms = {arm: context.run_arm(arm, train_arm(arm, context, shapes, corpus)) for arm in ARMS}
    metrics = {arm: result["metrics"] for arm, result in arms.items()}
    rows = [{"arm": arm, "val loss": m["val_loss"], "next-char accuracy": m["accuracy"],
             "parameters": f"{m['parameters']:,}", "tokens/s": f"{m['tokens_per_s']:,.0f}", "steps": m["steps"]}
            for arm, m in metrics.items()]
    figure = plot_validation_curves({arm: result["curve"] for arm, result in arms.items()},
                                    context.out_dir / "curves.png")
    winner = min(metrics, key=lambda arm: metrics[arm]["val_loss"])
    budget = f"{context.arm_steps} steps" if context.arm_steps else f"{context.arm_seconds:g} s"
    summary = (f"Both arms trained for {budget} each with seed {context.seed} on the same character vocabulary "
               f"({metrics['gru']['vocab_size']} symbols) and split; both are scored on the same "
               f"{metrics['gru']['eval_tokens']:,} held-out characters. Lower validation loss: **{winner}**.")
    prompt = arms["gru"]["prompt"]
    return RecipeReport(
        title="Character-level Shakespeare: GRU vs Transformer at equal time",
        summary=summary, columns=COLUMNS, rows=rows,
        results={"arms": metrics, "prompt": prompt, "samples": {arm: r["samples"] for arm, r in arms.items()},
                 "curves": {arm: r["curve"] for arm, r in arms.items()}, "winner": winner},
        sections=[("Samples", samples_markdown(prompt, {arm: r["samples"] for arm, r in arms.items()}))],
        commands={arm: f"lmlab train --config {context.out_dir / 'arms' / f'{arm}.yaml'} "
                       f"--out {context.arm_dir(arm)}" for arm in ARMS},
        figures=[figure.name],
    )


RECIPE = Recipe(
    name="shakespeare",
    description="character GRU (DLwP ch. 15) vs a Transformer at equal time: loss, accuracy, samples by temperature",
    arm_seconds={"small": 40, "default": 240, "large": 1200},
    run=run,
    source=DataSource(description="the tiny Shakespeare corpus", url=TINYSHAKESPEARE_URL,
                      sha256=TINYSHAKESPEARE_SHA256, filename="tinyshakespeare.txt",
                      local_format="a UTF-8 text file"),
)
