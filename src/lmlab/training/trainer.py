"""The training loop: forward → objective loss → backward → clip → step → log / eval / checkpoint.

Runs are reproducible on the CPU: each micro-batch is drawn from a generator seeded by
(seed, step, micro-step), dropout draws from the global RNG whose state every checkpoint stores,
and the learning rate is a function of the step (a time budget becomes a step horizon early in the
run, kept in every checkpoint). A run killed at any moment and resumed from its last checkpoint
therefore ends with the same weights, bit for bit, as one never stopped (at the same thread count).

The run's device, precision, compilation and activation checkpointing come from ``config.train``
(see :mod:`lmlab.training.devices`). Batches are built on the CPU and moved; a step waits for the
device only at logging intervals, where the loss is read, divergence checked (a NaN/inf loss is
flagged on the device at every step) and tokens/s, MFU and peak memory logged
(:mod:`lmlab.training.reports`).

Under torchrun (``train.distributed``: ``ddp`` or ``fsdp``, see :mod:`lmlab.training.distributed`)
every process trains on its rows of the step's global batch, the gradient is synchronised on the
last micro-batch of a step only, the logged loss is the mean over the processes, only process 0
prints, logs and shows the progress bar, and checkpoints are sharded. The processes agree at every
step on the clock and on a stop request (one small all-reduce), so they always stop together.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from lmlab.errors import LmlabError
from lmlab.models import expert_utilisation
from lmlab.output_dir import DirectoryLock
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed, reports
from lmlab.training.config import RunConfig
from lmlab.training.devices import (
    checkpoint_activations, inputs_on_model_device, placement_for, synchronize, to_device,
)
from lmlab.training.optim import (
    HORIZON_AT_STEP, HORIZON_KEY, build_optimizer, learning_rate, recorded_horizon, time_horizon,
)
from lmlab.training.objective_registry import TrainingTask

METRICS_FILE = "metrics.jsonl"
GRAD_SCALER_KEY = "grad_scaler"  # state.json: the fp16-mixed GradScaler's state


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
    report: dict[str, Any] = field(default_factory=dict)  # device, precision, speed, MFU, memory (see Trainer.report)


class Trainer:
    """Trains ``model`` on ``task`` as ``config.train`` says, writing into ``run_dir``.

    ``extra_state`` (config, tokenizer, ...) is stored in every checkpoint's ``state.json``.
    ``lock`` (the run directory's, see :func:`lmlab.output_dir.lock_output_dir`) is released when
    :meth:`fit` ends. ``monitor`` (optional) adds evaluation points and acts on each evaluation.
    ``between_steps`` (optional, set before :meth:`fit`) is called with the step number after
    each step, outside that step's timing (a benchmark runs a peer's step there).
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
        self.task = task
        self.run_dir = Path(run_dir)
        self.extra_state = extra_state or {}
        self.processes = distributed.launched_processes(self.cfg.distributed)
        self.progress = progress and self.processes.is_main
        self.echo = echo if self.processes.is_main else _silent
        device = distributed.process_device(self.processes, self.cfg.device)
        self.placement = placement_for(device, self.cfg.precision, self.cfg.compile)
        distributed.join(self.processes, self.placement.device)
        self.model = distributed.wrap(self._placed(model), self.processes, self.placement)
        self.optimizer = build_optimizer(distributed.unwrapped(self.model), self.cfg)
        self.scaler = torch.amp.GradScaler(self.placement.device.type) if self.placement.uses_scaler else None
        self._forward_model = torch.compile(self.model) if self.placement.compile else self.model
        self._compile_pending = self.placement.compile  # compilation happens in the first step
        self.compile_s: float | None = None  # seconds of the first compiled step (compilation + one step)
        self.flops_per_token = reports.flops_per_token(distributed.unwrapped(self.model), getattr(task, "window", config.model.context_length))
        self._peak: tuple[float | None, str] | None = None  # peak FLOP/s and its source, once measured
        self._speed = reports.SpeedMeter(task.tokens_per_batch * self.cfg.grad_accum)
        self._bad_step: torch.Tensor | None = None  # on the device: the first step whose loss was not finite (0: none)
        self._bad_loss: torch.Tensor | None = None  # and that loss
        self.step = 0
        self.elapsed = 0.0  # seconds trained so far, over all sessions of this run
        self.last_eval: dict[str, float] | None = None
        self.horizon: int | None = None  # the step a time-limited run's schedule ends at, once fixed
        self.step_seconds: list[float] = []  # wall time of each step of this session (for benchmarks)
        self._stop_requested = False
        self._saved_step: int | None = None  # the step of the checkpoint this trainer wrote last
        self._lock = lock
        self.monitor = monitor
        self.between_steps: Callable[[int], None] | None = None

    def _placed(self, model: nn.Module) -> nn.Module:
        """``model`` on the run's device in its weight dtype, blocks checkpointed if configured."""
        model = model.to(self.placement.device, dtype=self.placement.weight_dtype)
        if self.cfg.activation_checkpointing and checkpoint_activations(model) == 0:
            self.echo("warning: train.activation_checkpointing has no effect: the model has no Transformer blocks")
        return model

    # ----------------------------------------------------------------------------- resume
    def restore(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (weights, optimizer, RNG, step, elapsed time): a
        one-process checkpoint or a sharded one, whatever the number of processes now."""
        if self.processes.distributed or ckpt.is_sharded(path):
            distributed.restore_training_state(path, self.model, self.optimizer)
            state = ckpt.read_state(path)
        else:
            state = self._restore_one_process(path)
        if self.scaler is not None and isinstance(state.get(GRAD_SCALER_KEY), dict):
            self.scaler.load_state_dict(state[GRAD_SCALER_KEY])
        self.step = state["step"]
        self.elapsed = state.get("elapsed_s", 0.0)
        self.last_eval = state.get("last_eval")
        self.horizon = recorded_horizon(state, self.cfg.max_time)
        if self.processes.is_main:
            self._truncate_metrics_after(self.step)

    def _restore_one_process(self, path: Path) -> dict[str, Any]:
        """Weights, optimizer and RNG states of a one-process checkpoint; returns its state.json."""
        ckpt.load_weights(path, self.model)
        snapshot = ckpt.load_snapshot(path)
        if snapshot.optimizer_state is not None:
            self.optimizer.load_state_dict(snapshot.optimizer_state)
        if snapshot.rng_state is not None:
            torch.set_rng_state(snapshot.rng_state)
        if snapshot.cuda_rng_state is not None and self.placement.device.type == "cuda":
            torch.cuda.set_rng_state(snapshot.cuda_rng_state)
        return snapshot.state

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
        self._peak = reports.peak_flops(self.placement.device, self.placement.compute_dtype,
                                        tf32=self.placement.precision != "fp32-strict")
        try:
            stop_reason, last_checkpoint = self._train(bar)
        except Exception as exc:
            if self.processes.distributed and distributed.is_collective_failure(exc):
                raise distributed.lost_contact(exc, self._last_good_checkpoint()) from None
            raise
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous_handler)
            if self._lock is not None:
                self._lock.release()
        return TrainResult(self.step, stop_reason, self.last_eval, last_checkpoint, self.report())

    def _train(self, bar: tqdm) -> tuple[str, Path]:
        """The loop of :meth:`fit`: steps until a stop, then the final evaluation and checkpoint;
        returns the stop reason and the last checkpoint."""
        stop_reason, last_checkpoint = "max_steps", None
        session_start, session_elapsed_before = time.perf_counter(), self.elapsed
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
            loss, lr = self.train_step()
            if self._logs_at(self.step):
                synchronize(self.placement.device)  # the step's time includes the device's work
            seconds = time.perf_counter() - step_start
            self.elapsed = session_elapsed_before + (time.perf_counter() - session_start)
            seconds = self._agree_on_clock(seconds)
            self._after_step(bar, loss, lr, seconds)
            if self.between_steps is not None:
                self.between_steps(self.step)
            self._fix_horizon(bar)
            if self.step % self.cfg.checkpoint_every == 0 and self.step < self._last_step():
                last_checkpoint = self.save()
        if stop_reason == "max_steps" and self.step < self.cfg.max_steps:
            stop_reason = "max_time"  # the time budget's horizon ended the run
        if self.last_eval is None or self.last_eval.get("step") != self.step:
            self._evaluate()
        last_checkpoint = self.save()
        return stop_reason, last_checkpoint

    def _agree_on_clock(self, seconds: float) -> float:
        """With many processes: make the elapsed time, a stop request and the step's time (which
        a time budget's horizon is measured from) those of the slowest process, so that all take
        the same decisions; returns the step's time."""
        if not self.processes.distributed:
            return seconds
        device = self.placement.device if self.placement.device.type == "cuda" else torch.device("cpu")
        values = torch.tensor([float(self._stop_requested), self.elapsed, seconds], dtype=torch.float64, device=device)
        stop, self.elapsed, seconds = distributed.max_over_processes(values, self.processes).tolist()
        self._stop_requested = stop > 0
        return seconds

    def _last_good_checkpoint(self) -> Path | None:
        return ckpt.latest_good_checkpoint(self.run_dir, warn=lambda message: None)

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step on the batch of the current step (drawn from (seed, step)), then the
        step count advances; returns (the mean loss, on the device, and the learning rate). Only
        the step: no logging, evaluation, checkpoint or stop check, which :meth:`fit` adds around
        it; the loss is not read, so nothing waits for the device. For benchmarks and callers
        that drive the loop themselves."""
        result = self._train_step()
        self.step += 1
        return result

    def _train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step; returns (mean loss, on the device, and lr). The first step of a
        compiled model compiles it, falling back to the plain model if compilation fails."""
        if not self._compile_pending:
            return self._optimizer_step()
        self._compile_pending = False
        rng_state, start = torch.get_rng_state(), time.perf_counter()
        try:
            result = self._optimizer_step()
        except LmlabError:
            raise
        except Exception as exc:  # dynamo / inductor failures surface at the first call
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.echo(f"warning: torch.compile failed ({reason}); training without it")
            torch.set_rng_state(rng_state)
            self.optimizer.zero_grad(set_to_none=True)
            self._forward_model = self.model
            result = self._optimizer_step()
        self.compile_s = time.perf_counter() - start
        return result

    def _optimizer_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, lr). Nothing
        here waits for the device: a non-finite loss is only flagged (see :meth:`_check_divergence`)."""
        lr = learning_rate(self.step, self.cfg, self.horizon)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.placement.device)
        for micro in range(self.cfg.grad_accum):
            whole = self.task.train_batch(self._batch_generator(micro))  # the global batch
            rows = distributed.local_rows(whole, self.processes)
            weight = distributed.loss_weight(whole, rows, self.processes)
            batch = to_device(distributed.labelled(rows) if weight == 0 else rows, self.placement.device)
            last = micro == self.cfg.grad_accum - 1
            with distributed.gradient_sync(self.model, self.processes, enabled=last), self.placement.kernels():
                with self.placement.autocast():
                    loss = self.task.loss(self._forward_model, batch) * weight / self.cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach().float()
        self._flag_non_finite(total)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, lr

    def _flag_non_finite(self, loss: torch.Tensor) -> None:
        """Remember, on the device, the first step whose loss is inf or NaN, and that loss."""
        if self._bad_step is None:
            self._bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), device=loss.device)
        first = ~loss.isfinite() & (self._bad_step == 0)
        self._bad_step = torch.where(first, self.step + 1, self._bad_step)
        self._bad_loss = torch.where(first, loss, self._bad_loss)

    def _check_divergence(self) -> None:
        """Raise the divergence error if a step's loss was not finite (reads the device's flag)."""
        if self._bad_step is None:
            return
        step = int(distributed.max_over_processes(self._bad_step, self.processes))
        if step == 0:
            return
        loss = float(self._bad_loss) if int(self._bad_step) == step else "not finite"
        # The weights of the step before gave the bad loss: a checkpoint of them is no good.
        raise self._diverged(f"the loss is {loss} at step {step}", broken_step=step - 1)

    def _batch_generator(self, micro: int) -> torch.Generator:
        """The data position: batches depend only on (seed, step, micro-step)."""
        return batch_generator(self.cfg.seed, self.step * self.cfg.grad_accum + micro)

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

    def _logs_at(self, step: int) -> bool:
        """Whether step ``step`` is logged (the loss read from the device)."""
        return step % max(1, self.cfg.eval_every // 10) == 0 or step == 1

    def _after_step(self, bar: tqdm, loss: torch.Tensor, lr: float, seconds: float) -> None:
        self.step_seconds.append(seconds)
        if self.compile_s is None or len(self.step_seconds) > 1:
            self._speed.add(seconds)  # the compiling step is reported as compile_s, not as speed
        if self.cfg.max_time is not None and self.step % 50 == 0:
            bar.total = self._projected_steps()
        bar.update(1)
        if self._logs_at(self.step):
            self._check_divergence()
            self._log_train_step(bar, float(distributed.mean_over_processes(loss, self.processes)), lr)
        if self._evaluation_due():
            metrics = self._evaluate()
            if self.progress:
                bar.write(f"step {self.step}: " + ", ".join(_shown(name, value) for name, value in metrics.items()))

    def _log_train_step(self, bar: tqdm, loss: float, lr: float) -> None:
        """The ``train`` row of metrics.jsonl and the progress bar's loss and tokens/s."""
        tokens_per_s = self._speed.window_rate()
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s or 0:,.0f}", refresh=False)
        compiled = {"compile_s": self.compile_s} if self.step == 1 and self.compile_s is not None else {}
        self._log({"kind": "train", "step": self.step, "loss": loss, "lr": lr,
                   **self._speed_fields(tokens_per_s), **compiled, "elapsed_s": self.elapsed,
                   **expert_utilisation(distributed.unwrapped(self.model))})

    def _speed_fields(self, tokens_per_s: float | None) -> dict[str, Any]:
        """tokens/s, model FLOPs per token, MFU and peak memory (bytes) for a log row or the summary."""
        peak, _ = self._peak or (None, "")
        return {"tokens_per_s": tokens_per_s, "flops_per_token": self.flops_per_token,
                "mfu": reports.mfu(tokens_per_s, self.flops_per_token,
                                   peak * self.processes.world_size if peak else peak),
                "peak_memory_bytes": reports.peak_memory_bytes(self.placement.device)}

    def report(self) -> dict[str, Any]:
        """The session's speed report: device, precision, compilation, tokens/s over the timed
        steps, FLOPs per token, MFU against the peak (and where the peak comes from), peak memory."""
        peak, source = self._peak or (None, "")
        return {"device": str(self.placement.device), "precision": self.placement.precision,
                "processes": self.processes.world_size, "distributed": self.processes.mode,
                "compiled": self._forward_model is not self.model, "compile_s": self.compile_s,
                **self._speed_fields(self._speed.session_rate()), "peak_flops": peak, "peak_flops_source": source}

    def _evaluation_due(self) -> bool:
        every = self.cfg.eval_every > 0 and self.step % self.cfg.eval_every == 0
        return every or (self.monitor is not None and self.monitor.evaluates_at(self.step))

    def _evaluate(self) -> dict[str, float]:
        self._check_divergence()
        model = distributed.unwrapped(self.model)  # every process evaluates the same batches
        with inputs_on_model_device(model), self.placement.kernels(), self.placement.autocast():
            metrics = self.task.evaluate(model, self.cfg.eval_batches, seed=self.cfg.seed)
        self.model.train()
        self.last_eval = {**metrics, "step": self.step}
        self._log({"kind": "eval", "step": self.step, "elapsed_s": self.elapsed,
                   **{f"val_{k}": v for k, v in metrics.items()}})
        if self.monitor is not None:
            self.monitor.after_evaluation(self, metrics)
        return metrics

    # ----------------------------------------------------------------------------- state
    def save(self) -> Path:
        """Checkpoint the current step (weights, optimizer, RNG, scaler, counters)."""
        self._check_divergence()
        state = {**self.extra_state, "elapsed_s": self.elapsed, "last_eval": self.last_eval,
                 "config": self.config.to_dict(), HORIZON_KEY: {"steps": self.horizon, "max_time": self.cfg.max_time}}
        if self.scaler is not None:
            state[GRAD_SCALER_KEY] = self.scaler.state_dict()
        try:
            path = self._write_checkpoint(state)
        except ckpt.NonFiniteState as exc:
            raise self._diverged(f"{exc} after step {self.step}", broken_step=self.step) from None
        self._saved_step = self.step
        return path

    def _write_checkpoint(self, state: dict[str, Any]) -> Path:
        """One process's checkpoint, or the processes' sharded one."""
        if not self.processes.distributed:
            return ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, state,
                                        keep=self.cfg.keep_checkpoints, write_extra=self.extra_files())
        if self.extra_files() is not None:
            raise LmlabError("this run writes extra checkpoint files (adapters), which train in one process; "
                             "drop train.distributed")
        return distributed.save_sharded(self.run_dir, self.step, self.model, self.optimizer, state,
                                        self.cfg.keep_checkpoints, self.processes)

    def extra_files(self) -> Callable[[Path], None] | None:
        """What writes further files into each checkpoint of this run (none here; see
        :func:`~lmlab.training.checkpoint.save_checkpoint`)."""
        return None

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop at once (the last checkpoint is intact)
            raise KeyboardInterrupt
        self._stop_requested = True

    def _diverged(self, what: str, broken_step: int) -> LmlabError:
        """The error for a run that broke down (``what`` says how). A checkpoint this trainer wrote
        of ``broken_step`` goes first: its weights are the ones that broke, so resuming from it
        would diverge again. The error names the newest checkpoint that is still good."""
        if self._saved_step == broken_step and self.processes.is_main:
            ckpt.discard_checkpoint(self.run_dir, broken_step)
        distributed.barrier(self.processes)
        good = self._last_good_checkpoint()
        kept, again = (f"the last good checkpoint is {good}", "resume from it with --resume") if good \
            else ("no good checkpoint was written", "train again")
        return LmlabError(
            f"training diverged: {what}; {kept}. Lower train.lr or raise train.warmup_steps, then {again}"
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.processes.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics_after(self, step: int) -> None:
        """Drop log lines a killed session wrote after the checkpoint we resume from."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def batch_generator(seed: int, index: int) -> torch.Generator:
    """The generator micro-batch ``index`` (step × grad_accum + micro-step) of a run is drawn with."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def _silent(message: str) -> None:
    """The echo of a process other than process 0: only process 0 prints."""


def _shown(name: str, value: float) -> str:
    """One validation metric for the progress line: ``val loss 1.2345``."""
    digits = {"loss": 4, "perplexity": 2}.get(name, 3)
    return f"val {name} {value:.{digits}f}" if isinstance(value, float) else f"val {name} {value}"


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62
