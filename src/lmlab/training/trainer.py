"""The training loop: forward → objective loss → backward → clip → step → log / eval / checkpoint.

Runs are reproducible on the CPU: each micro-batch is drawn from a generator seeded by
(seed, step, micro-step), dropout draws from the global RNG whose state every checkpoint stores,
and the learning rate is a function of the step (a time budget becomes a step horizon early in the
run, kept in every checkpoint). A run killed at any moment and resumed from its last checkpoint
therefore ends with the same weights, bit for bit, as one never stopped (at the same thread count).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from lmlab.errors import LmlabError
from lmlab.models import expert_utilisation
from lmlab.output_dir import DirectoryLock
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import RunConfig
from lmlab.training.optim import (
    HORIZON_AT_STEP, HORIZON_KEY, build_optimizer, learning_rate, recorded_horizon, time_horizon,
)
from lmlab.training.objective_registry import TrainingTask

METRICS_FILE = "metrics.jsonl"


class EvalMonitor(Protocol):
    """What a fine-tuning run adds to the loop: more evaluation points (epoch ends), and what
    follows each evaluation (keeping the best checkpoint, early stopping)."""

    should_stop: bool  # set by after_evaluation to end the run ("early_stopping")

    def evaluates_at(self, step: int) -> bool: ...

    def after_evaluation(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    """How a call to :meth:`Trainer.fit` ended."""

    step: int
    stop_reason: str  # "max_steps", "max_time", "interrupted" or "early_stopping"
    last_eval: dict[str, float] | None
    checkpoint: Path


class Trainer:
    """Trains ``model`` on ``task`` as ``config.train`` says, writing into ``run_dir``.

    ``extra_state`` (config, tokenizer, ...) is stored in every checkpoint's ``state.json``.
    ``lock`` (the run directory's, see :func:`lmlab.output_dir.lock_output_dir`) is released when
    :meth:`fit` ends. ``monitor`` (optional) adds evaluation points and acts on each evaluation.
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        task: TrainingTask,
        run_dir: str | Path,
        extra_state: dict[str, Any] | None = None,
        progress: bool = True,
        echo: Callable[[str], None] = print,
        lock: DirectoryLock | None = None,
        monitor: EvalMonitor | None = None,
    ):
        self.config = config
        self.cfg = config.train
        self.model = model
        self.task = task
        self.run_dir = Path(run_dir)
        self.extra_state = extra_state or {}
        self.progress = progress
        self.echo = echo
        self.optimizer = build_optimizer(model, self.cfg)
        self.step = 0
        self.elapsed = 0.0  # seconds trained so far, over all sessions of this run
        self.last_eval: dict[str, float] | None = None
        self.horizon: int | None = None  # the step a time-limited run's schedule ends at, once fixed
        self.step_seconds: list[float] = []  # wall time of each step of this session (for benchmarks)
        self._stop_requested = False
        self._saved_step: int | None = None  # the step of the checkpoint this trainer wrote last
        self._lock = lock
        self.monitor = monitor

    # ----------------------------------------------------------------------------- resume
    def restore(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (weights, optimizer, RNG, step, elapsed time)."""
        ckpt.load_weights(path, self.model)
        snapshot = ckpt.load_snapshot(path)
        if snapshot.optimizer_state is not None:
            self.optimizer.load_state_dict(snapshot.optimizer_state)
        if snapshot.rng_state is not None:
            torch.set_rng_state(snapshot.rng_state)
        self.step = snapshot.step
        self.elapsed = snapshot.state.get("elapsed_s", 0.0)
        self.last_eval = snapshot.state.get("last_eval")
        self.horizon = recorded_horizon(snapshot.state, self.cfg.max_time)
        self._truncate_metrics_after(self.step)

    # ----------------------------------------------------------------------------- loop
    def fit(self) -> TrainResult:
        """Train until ``max_steps``, ``max_time`` or Ctrl-C; always ends with a checkpoint."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(
            total=self.cfg.max_steps, initial=self.step, disable=not self.progress,
            dynamic_ncols=True, desc="train", unit="step",
        )
        last_checkpoint = None
        stop_reason = "max_steps"
        session_start, session_elapsed_before = time.perf_counter(), self.elapsed
        try:
            while self.step < self._last_step():
                if self._stop_requested:
                    stop_reason = "interrupted"
                    break
                if self.monitor is not None and self.monitor.should_stop:
                    stop_reason = "early_stopping"
                    break
                if self.cfg.max_time is not None and self.elapsed >= self.cfg.max_time:
                    stop_reason = "max_time"
                    bar.total = self.step  # the time budget, not the step horizon, ended the run
                    break
                step_start = time.perf_counter()
                loss, lr = self._train_step()
                self.step += 1
                self.elapsed = session_elapsed_before + (time.perf_counter() - session_start)
                self._after_step(bar, loss, lr, time.perf_counter() - step_start)
                self._fix_horizon(bar)
                if self.step % self.cfg.checkpoint_every == 0 and self.step < self._last_step():
                    last_checkpoint = self.save()
            if stop_reason == "max_steps" and self.step < self.cfg.max_steps:
                stop_reason = "max_time"  # the time budget's horizon ended the run
            if self.last_eval is None or self.last_eval.get("step") != self.step:
                self._evaluate()
            last_checkpoint = self.save()
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
            if self._lock is not None:
                self._lock.release()
        return TrainResult(self.step, stop_reason, self.last_eval, last_checkpoint)

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, lr)."""
        lr = learning_rate(self.step, self.cfg, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for micro in range(self.cfg.grad_accum):
            batch = self.task.train_batch(self._batch_generator(micro))
            loss = self.task.loss(self.model, batch) / self.cfg.grad_accum
            loss.backward()
            total += loss.item()
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(f"the loss is {total} at step {self.step + 1}")
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, lr

    def _batch_generator(self, micro: int) -> torch.Generator:
        """The data position: batches depend only on (seed, step, micro-step)."""
        index = self.step * self.cfg.grad_accum + micro
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index)

    def _projected_steps(self) -> int:
        """Steps the run will reach within its time budget at the recent pace (for the progress bar)."""
        recent = self.step_seconds[-50:]
        per_step = sum(recent) / len(recent)
        remaining = max(0.0, self.cfg.max_time - self.elapsed)
        return min(self._last_step(), self.step + round(remaining / per_step))

    def _last_step(self) -> int:
        """``max_steps``, or the time budget's horizon once fixed, whichever is sooner."""
        return self.cfg.max_steps if self.horizon is None else min(self.horizon, self.cfg.max_steps)

    def _fix_horizon(self, bar: tqdm) -> None:
        """From step ``HORIZON_AT_STEP`` on, a time budget is a fixed step horizon for the schedule."""
        if self.cfg.max_time is not None and self.horizon is None and self.step >= HORIZON_AT_STEP:
            self.horizon = time_horizon(self.step, self.elapsed, self.step_seconds, self.cfg)
            bar.total = self._last_step()

    def _after_step(self, bar: tqdm, loss: float, lr: float, seconds: float) -> None:
        self.step_seconds.append(seconds)
        tokens_per_s = self.task.tokens_per_batch * self.cfg.grad_accum / max(seconds, 1e-9)
        if self.cfg.max_time is not None and self.step % 50 == 0:
            bar.total = self._projected_steps()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        if self.step % max(1, self.cfg.eval_every // 10) == 0 or self.step == 1:
            self._log({"kind": "train", "step": self.step, "loss": loss, "lr": lr,
                       "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed,
                       **expert_utilisation(self.model)})
        if self._evaluation_due():
            metrics = self._evaluate()
            if self.progress:
                bar.write(f"step {self.step}: " + ", ".join(_shown(name, value) for name, value in metrics.items()))

    def _evaluation_due(self) -> bool:
        every = self.cfg.eval_every > 0 and self.step % self.cfg.eval_every == 0
        return every or (self.monitor is not None and self.monitor.evaluates_at(self.step))

    def _evaluate(self) -> dict[str, float]:
        metrics = self.task.evaluate(self.model, self.cfg.eval_batches, seed=self.cfg.seed)
        self.model.train()
        self.last_eval = {**metrics, "step": self.step}
        self._log({"kind": "eval", "step": self.step, "elapsed_s": self.elapsed,
                   **{f"val_{k}": v for k, v in metrics.items()}})
        if self.monitor is not None:
            self.monitor.after_evaluation(self, metrics)
        return metrics

    # ----------------------------------------------------------------------------- state
    def save(self) -> Path:
        """Checkpoint the current step (weights, optimizer, RNG, counters)."""
        state = {**self.extra_state, "elapsed_s": self.elapsed, "last_eval": self.last_eval,
                 "config": self.config.to_dict(), HORIZON_KEY: {"steps": self.horizon, "max_time": self.cfg.max_time}}
        try:
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, state,
                                        keep=self.cfg.keep_checkpoints, write_extra=self.extra_files())
        except ckpt.NonFiniteState as exc:
            raise self._diverged(f"{exc} after step {self.step}") from None
        self._saved_step = self.step
        return path

    def extra_files(self) -> Callable[[Path], None] | None:
        """What writes further files into each checkpoint of this run (none here; see
        :func:`~lmlab.training.checkpoint.save_checkpoint`)."""
        return None

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop at once (the last checkpoint is intact)
            raise KeyboardInterrupt
        self._stop_requested = True

    def _diverged(self, what: str) -> LmlabError:
        """The error for a run that broke down (``what`` says how). The checkpoint this trainer
        wrote of the current step goes first: its weights are the ones that broke, so resuming
        from it would diverge again. The error names the newest checkpoint that is still good."""
        if self._saved_step == self.step:
            ckpt.discard_checkpoint(self.run_dir, self.step)
        good = ckpt.latest_good_checkpoint(self.run_dir, warn=lambda message: None)
        kept, again = (f"the last good checkpoint is {good}", "resume from it with --resume") if good \
            else ("no good checkpoint was written", "train again")
        return LmlabError(
            f"training diverged: {what}; {kept}. Lower train.lr or raise train.warmup_steps, then {again}"
        )

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics_after(self, step: int) -> None:
        """Drop log lines a killed session wrote after the checkpoint we resume from."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _shown(name: str, value: float) -> str:
    """One validation metric for the progress line: ``val loss 1.2345``."""
    digits = {"loss": 4, "perplexity": 2}.get(name, 3)
    return f"val {name} {value:.{digits}f}" if isinstance(value, float) else f"val {name} {value}"


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
