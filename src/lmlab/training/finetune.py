"""Fine-tune a pretrained model on a user's data: ``finetune(FinetuneConfig(...))``.

The model is an lmlab run directory, a Hugging Face model directory or a GGUF file (see
:func:`lmlab.training.run.load_run`). The task turns the data into a
:class:`~lmlab.training.objective_registry.TrainingTask` for the one trainer, so checkpoints,
``metrics.jsonl``, progress and exact ``resume`` work as for pretraining:

* ``classify`` — an encoder (BERT, RoBERTa, an lmlab encoder run) with a new classification head
  (cls or mean pooling), or a Transformer decoder (GPT-2, Llama, an lmlab decoder run) scoring its
  last real token; labels from the training data, kept in the run; metric: accuracy.
* ``seq2seq`` — an encoder-decoder (T5, BART, an lmlab encoder-decoder or GRU seq2seq run) with
  teacher forcing, or a decoder with ``prompt_format`` (loss on the target only); validation
  generates and scores BLEU, chrF, ROUGE; metric: chrF.
* ``causal-lm`` — continued pretraining of a decoder on documents packed with EOS; metric: loss.
* ``chat`` — supervised fine-tuning of a decoder on conversations (OpenAI ``messages``) rendered
  with its tokenizer's chat template, the loss on the assistant's tokens only; metric: loss.

``freeze`` stops gradients to part of the model (:mod:`lmlab.training.freezing`); ``lora_rank``
trains LoRA adapters instead of the weights (:mod:`lmlab.training.lora`; a classifier's head
stays trainable), written on their own into every checkpoint and merged when the run is loaded.

The best checkpoint by the metric is kept in ``RUN/best/``; what the run needs at inference
(task, labels, special ids, formats) is stored under ``"finetune"`` in every checkpoint's state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from lmlab.errors import LmlabError
from lmlab.generation import GenerationConfig
from lmlab.tokenizers import tokenizer_to_json
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import DataConfig, RunConfig, TrainConfig
from lmlab.training.finetune_prepare import (
    POOLINGS,
    SOURCE_SLOT,
    UNBOUNDED_STEPS,
    Prepared,
    prepare,
)
from lmlab.training.finetune_tasks import ClassifyTask
from lmlab.training.freezing import FREEZABLE
from lmlab.training.lora import DEFAULT_TARGETS, LORA_STATE, lora_layers, lora_settings, parse_targets, save_adapters
from lmlab.training.run import claim_run_dir
from lmlab.training.selection import BEST_DIR, Selection
from lmlab.training.task_data import BatchSize, EpochPlan
from lmlab.training.trainer import METRICS_FILE, Trainer

TASKS = ("classify", "seq2seq", "causal-lm", "chat")
SELECTION_METRICS = {"classify": ("accuracy", True), "seq2seq": ("chrf", True), "causal-lm": ("loss", False),
                     "chat": ("loss", False)}
DEFAULT_EPOCHS = 3
DEFAULT_BATCH_SIZE = 16


@dataclass
class FinetuneConfig:
    """Everything ``lmlab finetune`` takes; see the module docstring for the tasks."""

    model: str
    task: str
    data: str
    out: str
    val: str | None = None
    val_fraction: float = 0.1
    text_column: str = "text"
    label_column: str = "label"
    source_column: str = "source"
    target_column: str = "target"
    messages_column: str = "messages"  # chat: the JSONL field holding the conversation
    source_prefix: str = ""  # seq2seq: put before every source ("summarize: ")
    prompt_format: str | None = None  # seq2seq on a decoder: "{source}\nTL;DR: "
    pooling: str | None = None  # classify: cls or mean (default: cls when the tokenizer adds [CLS]/<s>)
    epochs: int | None = None
    max_steps: int | None = None
    max_time: float | None = None
    batch_size: int | None = None
    max_tokens_per_batch: int | None = None
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    truncate: bool = True
    eval_every: int | None = None  # steps; default: once an epoch (and at each epoch end anyway)
    early_stopping_patience: int | None = None
    checkpoint_every: int = 500
    strategy: str = "greedy"  # seq2seq validation decoding: greedy or beam
    num_beams: int = 1
    max_new_tokens: int = 64
    resume: bool = False
    freeze: str | None = None  # embeddings, encoder or all-but-head
    lora_rank: int | None = None  # LoRA adapters of this rank instead of training the weights
    lora_alpha: float | None = None  # default 16
    lora_dropout: float | None = None  # default 0
    lora_targets: str | None = None  # roles q,k,v,o,ffn; default q,k,v,o

    def validate(self) -> None:
        """Raise :class:`LmlabError` for settings a fine-tuning run cannot use."""
        if self.task not in TASKS:
            raise LmlabError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise LmlabError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.batch_size is not None and self.max_tokens_per_batch is not None:
            raise LmlabError("give --batch-size or --max-tokens-per-batch, not both")
        for name in ("epochs", "max_steps", "eval_every", "early_stopping_patience", "max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LmlabError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.prompt_format is not None and SOURCE_SLOT not in self.prompt_format:
            raise LmlabError(f"--prompt-format must contain {SOURCE_SLOT}, e.g. '{{source}}\\nTL;DR: '")
        self._validate_adaptation()

    def _validate_adaptation(self) -> None:
        if self.freeze is not None and self.freeze not in FREEZABLE:
            raise LmlabError(f"--freeze must be one of {', '.join(FREEZABLE)}, got {self.freeze!r}")
        lora_options = (self.lora_alpha, self.lora_dropout, self.lora_targets)
        if self.lora_rank is None and any(option is not None for option in lora_options):
            raise LmlabError("--lora-alpha, --lora-dropout and --lora-targets need --lora-rank R")
        if self.lora_rank is not None and self.freeze is not None:
            raise LmlabError("--freeze and --lora-rank do not combine: LoRA already freezes all but the adapters")
        if self.lora_targets is not None:
            parse_targets(self.lora_targets)

    def lora(self) -> dict[str, Any] | None:
        """apply_lora's keyword arguments, or None without --lora-rank."""
        if self.lora_rank is None:
            return None
        return {"rank": self.lora_rank, "alpha": 16.0 if self.lora_alpha is None else self.lora_alpha,
                "dropout": self.lora_dropout or 0.0, "targets": self.lora_targets or ",".join(DEFAULT_TARGETS)}

    def batch(self) -> BatchSize:
        if self.max_tokens_per_batch is not None:
            return BatchSize(max_tokens=self.max_tokens_per_batch)
        return BatchSize(examples=self.batch_size or DEFAULT_BATCH_SIZE)

    def generation(self, eos_id: int) -> GenerationConfig:
        """How validation (and ``lmlab seq2seq``) decodes."""
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, strategy=self.strategy, num_beams=self.num_beams,
                                  eos_ids=(eos_id,), draft_tokens=0)
        config.validate()
        return config


@dataclass
class FinetuneResult:
    """How a fine-tuning run ended: its last step, why, the last evaluation and the checkpoints."""

    step: int
    stop_reason: str
    last_eval: dict[str, float] | None
    checkpoint: Path
    best: Path | None
    truncated: int  # examples cut to the model's context
    trainable: int  # parameter values training changes (LoRA: the adapters and a classifier's head)
    frozen: int  # parameter values it leaves alone (--freeze, LoRA)
    report: dict[str, Any] | None = None  # classify: the final model's validation report (confusion matrix)

    def summary(self) -> dict[str, Any]:
        """The one-line JSON ``lmlab finetune`` prints."""
        return {"step": self.step, "stop_reason": self.stop_reason, "checkpoint": str(self.checkpoint),
                "best": None if self.best is None else str(self.best), "truncated": self.truncated,
                "trainable_parameters": self.trainable, "frozen_parameters": self.frozen,
                **{f"val_{k}": v for k, v in (self.last_eval or {}).items() if k != "step"}}


def finetune(config: FinetuneConfig, progress: bool = True, echo: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data`` into ``config.out`` (or continue it, with
    ``resume``); returns how it ended. Data and model are checked before the directory is touched."""
    out = Path(config.out)
    start = _resume_point(out, echo) if config.resume else None
    if start is not None:
        config = _resumed_config(config, ckpt.read_state(start))
    config.validate()
    prepared = prepare(config, ckpt.read_state(start) if start else None, echo)
    run_config = _run_config(config, prepared)
    lock = claim_run_dir(out, config.resume)
    try:
        trainer = _trainer(config, run_config, prepared, out, start, progress, echo, lock)
    except BaseException:
        lock.release()
        raise
    result = trainer.fit()
    best = out / BEST_DIR
    report = prepared.task.validation_report(prepared.model) if isinstance(prepared.task, ClassifyTask) else None
    return FinetuneResult(result.step, result.stop_reason, result.last_eval, result.checkpoint,
                          best if ckpt.list_checkpoints(best) else None, prepared.truncated,
                          *_parameter_counts(prepared.model), report)


def _parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter values, each shared tensor once."""
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return trainable, sum(p.numel() for p in parameters) - trainable


def _trainer(config: FinetuneConfig, run_config: RunConfig, prepared: Prepared, out: Path, start: Path | None,
             progress: bool, echo: Callable[[str], None], lock) -> Trainer:
    if start is None and ckpt.list_checkpoints(out):
        raise LmlabError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if start is None:
        (out / METRICS_FILE).unlink(missing_ok=True)
    plan = prepared.task.plan
    metric, higher = SELECTION_METRICS[config.task]
    stored = ckpt.read_state(start).get("selection") if start else None
    selection = Selection(metric, higher, config.early_stopping_patience,
                                 lambda step: plan.locate(step)[1] == 0, stored)
    extra = {"tokenizer": tokenizer_to_json(prepared.tokenizer), "finetune": prepared.spec}
    if lora_layers(prepared.model):
        extra[LORA_STATE] = lora_settings(prepared.model).to_dict()  # load_run merges the adapters
    trainer = AdapterTrainer(run_config, prepared.model, prepared.task, out, extra_state=extra,
                             progress=progress, echo=echo, lock=lock, monitor=selection)
    ckpt.remove_partial_checkpoints(out)
    if start is not None:
        trainer.restore(start)
        prepared.task.seek(trainer.step)
        trainer.extra_state["selection"] = selection.state()
        echo(f"resuming from {start} (step {trainer.step})")
    return trainer


class AdapterTrainer(Trainer):
    """The trainer, also writing a LoRA model's adapters on their own into each checkpoint (and
    each ``RUN/best/``), inside the checkpoint's atomic write."""

    def extra_files(self) -> Callable[[Path], None] | None:
        if not lora_layers(self.model):
            return None
        return lambda directory: save_adapters(self.model, directory)


def _run_config(config: FinetuneConfig, prepared: Prepared) -> RunConfig:
    """The trainer's config: constant learning rate after an optional warm-up, AdamW (0.9, 0.999)."""
    plan = prepared.task.plan
    steps = _step_budget(config, plan)
    train = TrainConfig(
        batch_size=config.batch_size or DEFAULT_BATCH_SIZE, lr=config.lr, min_lr=config.lr,
        warmup_steps=config.warmup_steps, max_steps=steps, max_time=config.max_time,
        weight_decay=config.weight_decay, beta1=0.9, beta2=0.999, grad_clip=config.grad_clip,
        eval_every=config.eval_every or len(plan.epoch(0)), checkpoint_every=config.checkpoint_every,
        keep_checkpoints=2, seed=config.seed, sample_chars=0,
    )
    train.validate()
    return RunConfig(model=prepared.model_config, train=train, data=DataConfig(corpus=config.data))


def _step_budget(config: FinetuneConfig, plan: EpochPlan) -> int:
    """Optimizer steps: the epochs' batches, capped by --max-steps (default: 3 epochs)."""
    epochs = config.epochs
    if epochs is None and config.max_steps is None:
        if config.max_time is not None:
            return UNBOUNDED_STEPS
        epochs = DEFAULT_EPOCHS
    steps = plan.epoch_ends(epochs)[-1] if epochs is not None else UNBOUNDED_STEPS
    return min(steps, config.max_steps or steps)


def _resume_point(out: Path, echo: Callable[[str], None]) -> Path:
    start = ckpt.latest_good_checkpoint(out, echo) if out.is_dir() else None
    if start is None:
        raise LmlabError(f"nothing to resume in {out}: no good checkpoint there; drop --resume to start a new run")
    return start


def _resumed_config(config: FinetuneConfig, state: dict[str, Any]) -> FinetuneConfig:
    """The settings stored in the run, with this call's budgets (epochs, steps, time) when given."""
    if "finetune" not in state:
        raise LmlabError(f"{config.out} is not a fine-tuning run; resume it with 'lmlab train --resume'")
    stored = FinetuneConfig(**state["finetune"]["settings"])
    budgets = {name: getattr(config, name) for name in ("epochs", "max_steps", "max_time")
               if getattr(config, name) is not None}
    return dataclasses.replace(stored, out=config.out, resume=True, **budgets)


