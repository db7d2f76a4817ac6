"""Model selection for fine-tuning: evaluate at each epoch end too, keep the best checkpoint by
the task's metric in ``RUN/best/``, and stop early after ``patience`` evaluations without a gain.

The state (best value, its step, evaluations since) rides in every checkpoint's ``state.json``
under ``"selection"``, so a resumed run keeps selecting where it left off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lmlab.training import checkpoint as ckpt

BEST_DIR = "best"


class Selection:
    """An :class:`~lmlab.training.trainer.EvalMonitor`: best checkpoint and early stopping."""

    def __init__(self, metric: str, higher_is_better: bool, patience: int | None,
                 is_epoch_end: Callable[[int], bool], stored: dict[str, Any] | None = None):
        self.metric, self.higher_is_better, self.patience = metric, higher_is_better, patience
        self.is_epoch_end = is_epoch_end
        stored = stored or {}
        self.best: float | None = stored.get("best")
        self.best_step: int | None = stored.get("best_step")
        self.since_best: int = stored.get("since_best", 0)
        self.should_stop: bool = stored.get("stopped", False)

    def evaluates_at(self, step: int) -> bool:
        return self.is_epoch_end(step)

    def after_evaluation(self, trainer: Any, metrics: dict[str, float]) -> None:
        """Keep the model if it is the best so far; count towards early stopping otherwise."""
        value = metrics[self.metric]
        if self._improves(value):
            self.best, self.best_step, self.since_best = value, trainer.step, 0
            self._save_best(trainer, metrics)
        else:
            self.since_best += 1
            self.should_stop = self.patience is not None and self.since_best >= self.patience
        trainer.extra_state["selection"] = self.state()

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to resume the selection."""
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                "since_best": self.since_best, "stopped": self.should_stop}

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.higher_is_better else value < self.best

    def _save_best(self, trainer: Any, metrics: dict[str, float]) -> Path:
        state = {**trainer.extra_state, "selection": self.state(), "config": trainer.config.to_dict(),
                 "elapsed_s": trainer.elapsed, "last_eval": {**metrics, "step": trainer.step}}
        return ckpt.save_checkpoint(Path(trainer.run_dir) / BEST_DIR, trainer.step, trainer.model, None, state, keep=1,
                                    write_extra=trainer.extra_files())
