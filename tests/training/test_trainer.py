"""The training loop: learning, budgets, divergence, Ctrl-C and exact in-process resume."""

import json
import math
import os
import signal

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training import trainer as trainer_module
from lmlab.training.optim import learning_rate
from lmlab.training.run import make_trainer
from lmlab.training.trainer import METRICS_FILE

TEXT = "the quick brown fox jumps over the lazy dog. " * 30 + "\n" + "pack my box with five dozen jugs. " * 20


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny_config(corpus, *overrides: str) -> RunConfig:
    config = RunConfig()
    apply_overrides(
        config,
        [
            f"data.corpus={corpus}",
            "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.context_length=16",
            "model.dropout=0.0",
            "train.batch_size=8", "train.lr=3e-3", "train.min_lr=3e-4", "train.warmup_steps=5",
            "train.max_steps=60", "train.eval_every=20", "train.eval_batches=2",
            "train.checkpoint_every=20", "train.sample_chars=0",
            *overrides,
        ],
    )
    return config


def trainer_for(config, run_dir, resume=False, messages=None):
    trainer, _ = make_trainer(config, run_dir, resume=resume, progress=False,
                              echo=(messages.append if messages is not None else print))
    return trainer


def train_records(run_dir):
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_loss_goes_down(tmp_path, corpus):
    trainer = trainer_for(tiny_config(corpus), tmp_path / "run")
    before = trainer.task.evaluate(trainer.model, 2, seed=trainer.cfg.seed)["loss"]
    assert before == pytest.approx(math.log(trainer.model.config.vocab_size), rel=0.1)  # untrained ≈ uniform
    result = trainer.fit()
    assert result.stop_reason == "max_steps" and result.step == 60
    assert result.last_eval["step"] == 60
    assert result.last_eval["loss"] < 0.7 * before
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "step-00000060"
    ckpt.verify_checkpoint(result.checkpoint)
    records = train_records(tmp_path / "run")
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert train_losses[-1] < 0.7 * train_losses[0]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [20, 40, 60]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == [
        "step-00000020", "step-00000040", "step-00000060"
    ]


class StepClock:
    """The trainer's ``time`` module in tests: a clock that moves only when a step runs, by
    ``seconds(step)`` for optimizer step ``step`` (1-based), so no test depends on wall time."""

    def __init__(self, seconds):
        self.now = 0.0
        self.seconds = seconds

    def perf_counter(self) -> float:
        return self.now


def use_clock(trainer, monkeypatch, seconds) -> StepClock:
    clock = StepClock(seconds)
    monkeypatch.setattr(trainer_module, "time", clock)
    real_step = trainer._train_step

    def timed_step():
        clock.now += seconds(trainer.step + 1)
        return real_step()

    monkeypatch.setattr(trainer, "_train_step", timed_step)
    return clock


def slow_start(then: float):
    """Steps 1 and 2 take 4 s (a session's first steps are not measured), later ones ``then``."""
    return lambda step: 4.0 if step <= 2 else then


TIME_BUDGET = ("train.max_steps=1000000", "train.max_time=30", "train.eval_every=10", "train.checkpoint_every=100")
HORIZON = 10 + 14  # at step 10, 4 + 4 + 8 × 1 = 16 s are spent: 14 steps of 1 s fit in the 30 s


def train_lrs(run_dir):
    return [(r["step"], r["lr"]) for r in train_records(run_dir) if r["kind"] == "train"]


def test_time_budget_becomes_a_step_horizon_that_anneals_the_schedule(tmp_path, corpus, monkeypatch):
    config = tiny_config(corpus, *TIME_BUDGET)
    trainer = trainer_for(config, tmp_path / "run")
    use_clock(trainer, monkeypatch, slow_start(1.0))
    result = trainer.fit()
    assert result.stop_reason == "max_time" and result.step == HORIZON
    state = ckpt.read_state(result.checkpoint)
    assert state["step"] == HORIZON and state["elapsed_s"] == 30.0
    assert state["schedule_horizon"] == {"steps": HORIZON, "max_time": 30.0}
    # By steps alone (a million) the learning rate would still be at its peak; the horizon anneals it.
    lrs = train_lrs(tmp_path / "run")
    assert len(lrs) == HORIZON  # one record per step with eval_every=10
    assert lrs == [(step + 1, learning_rate(step, config.train, HORIZON if step >= 10 else None)) for step in range(HORIZON)]
    assert lrs[-1][1] == pytest.approx(3e-4, rel=0.1)  # all but down to min_lr


def test_a_time_budget_still_stops_a_run_slower_than_measured(tmp_path, corpus, monkeypatch):
    trainer = trainer_for(tiny_config(corpus, *TIME_BUDGET), tmp_path / "run")
    use_clock(trainer, monkeypatch, lambda step: 1.0 if step <= 10 else 3.0)
    result = trainer.fit()
    assert result.stop_reason == "max_time" and result.step == 10 + 7  # 10 s + 7 × 3 s ≥ 30 s
    assert trainer.horizon == 10 + 20 and trainer.elapsed >= 30


def test_the_schedule_of_a_time_limited_run_is_a_function_of_the_step(tmp_path, corpus, monkeypatch):
    """Two runs of one command that measure the same pace early but run at different speeds later
    have the same learning rates and end with the same weights."""
    runs = []
    for name, later in (("steady", 1.0), ("faster", 0.6)):
        trainer = trainer_for(tiny_config(corpus, *TIME_BUDGET), tmp_path / name)
        use_clock(trainer, monkeypatch, lambda step, later=later: slow_start(1.0)(step) if step <= 10 else later)
        assert trainer.fit().step == HORIZON
        runs.append((train_lrs(tmp_path / name), final_parameters(trainer)))
    (lrs_a, weights_a), (lrs_b, weights_b) = runs
    assert lrs_a == lrs_b
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)


def test_the_horizon_survives_a_resume(tmp_path, corpus, monkeypatch):
    """A resumed time-limited run reuses the recorded horizon (it does not measure a new one at its
    own pace) and ends with the weights of the uninterrupted run."""
    straight = trainer_for(tiny_config(corpus, *TIME_BUDGET), tmp_path / "straight")
    use_clock(straight, monkeypatch, slow_start(1.0))
    straight.fit()
    expected = final_parameters(straight)

    first = trainer_for(tiny_config(corpus, *TIME_BUDGET), tmp_path / "stopped")
    use_clock(first, monkeypatch, slow_start(1.0))
    interrupt_at(first, monkeypatch, 15)
    assert first.fit().stop_reason == "interrupted"
    monkeypatch.undo()

    second = trainer_for(tiny_config(corpus, *TIME_BUDGET), tmp_path / "stopped", resume=True, messages=[])
    assert second.step == 15 and second.horizon == HORIZON
    use_clock(second, monkeypatch, lambda step: 0.25)  # at this pace a new measurement would run far longer
    result = second.fit()
    assert result.stop_reason == "max_time" and result.step == HORIZON
    resumed = final_parameters(second)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, corpus, monkeypatch):
    config = tiny_config(corpus, "train.checkpoint_every=4", "train.keep_checkpoints=10")
    trainer = trainer_for(config, tmp_path / "run")
    real_loss = trainer.task.loss
    calls = {"n": 0}

    def loss_that_explodes(model, batch):
        calls["n"] += 1
        loss = real_loss(model, batch)
        return loss * float("nan") if calls["n"] == 11 else loss  # the 11th step

    monkeypatch.setattr(trainer.task, "loss", loss_that_explodes)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(LmlabError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message
    assert "diverged" in message and "nan" in message and "step 11" in message
    assert "step-00000008" in message  # names the last good checkpoint
    assert "train.lr" in message  # and says what to change
    assert signal.getsignal(signal.SIGINT) is handler  # the Ctrl-C handler is put back
    kept = ckpt.list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-00000004", "step-00000008"]
    for path in kept:
        ckpt.verify_checkpoint(path)
    # The checkpoint is the model as it was at step 8: resuming from it works.
    resumed = trainer_for(config, tmp_path / "run", resume=True, messages=[])
    assert resumed.step == 8


def test_huge_learning_rate_diverges_with_an_error(tmp_path, corpus):
    config = tiny_config(corpus, "train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=0")
    with pytest.raises(LmlabError, match="diverged"):
        trainer_for(config, tmp_path / "run").fit()


def interrupt_at(trainer, monkeypatch, at_step):
    """Send SIGINT to ourselves from inside optimizer step ``at_step`` (1-based)."""
    real_step = trainer._train_step

    def step():
        if trainer.step + 1 == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step()

    monkeypatch.setattr(trainer, "_train_step", step)


def test_sigint_stops_and_checkpoints_the_current_step(tmp_path, corpus, monkeypatch):
    trainer = trainer_for(tiny_config(corpus), tmp_path / "run")
    interrupt_at(trainer, monkeypatch, 7)
    handler = signal.getsignal(signal.SIGINT)
    result = trainer.fit()
    assert result.stop_reason == "interrupted"
    assert result.step == 7  # the step in flight finishes, then the loop stops
    assert result.checkpoint.name == "step-00000007"
    ckpt.verify_checkpoint(result.checkpoint)
    assert ckpt.load_snapshot(result.checkpoint).step == 7
    assert result.last_eval is not None and result.last_eval["step"] == 7
    assert signal.getsignal(signal.SIGINT) is handler


def final_parameters(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_resume_in_process_equals_uninterrupted(tmp_path, corpus, monkeypatch):
    """Dropout (RNG state) and gradient accumulation (data position) both have to be restored."""
    overrides = ("model.dropout=0.2", "train.grad_accum=2", "train.max_steps=14",
                 "train.checkpoint_every=4", "train.eval_every=5")
    straight = trainer_for(tiny_config(corpus, *overrides), tmp_path / "straight")
    assert straight.fit().stop_reason == "max_steps"
    expected = final_parameters(straight)

    first = trainer_for(tiny_config(corpus, *overrides), tmp_path / "stopped")
    interrupt_at(first, monkeypatch, 6)
    assert first.fit().stop_reason == "interrupted"
    monkeypatch.undo()

    messages = []
    second = trainer_for(tiny_config(corpus, *overrides), tmp_path / "stopped", resume=True, messages=messages)
    assert second.step == 6 and any("resuming" in m for m in messages)
    result = second.fit()
    assert result.stop_reason == "max_steps" and result.step == 14
    resumed = final_parameters(second)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    # The run's log reads as one run: no step is logged twice.
    steps = [(r["kind"], r["step"]) for r in train_records(tmp_path / "stopped")]
    assert len(steps) == len(set(steps))


def test_resume_changes_something_only_when_needed(tmp_path, corpus, monkeypatch):
    """Guard for the test above: without restoring the RNG state, dropout makes the runs differ."""
    overrides = ("model.dropout=0.2", "train.grad_accum=2", "train.max_steps=8", "train.checkpoint_every=100")
    straight = trainer_for(tiny_config(corpus, *overrides), tmp_path / "a")
    straight.fit()
    first = trainer_for(tiny_config(corpus, *overrides), tmp_path / "b")
    interrupt_at(first, monkeypatch, 3)
    first.fit()
    monkeypatch.undo()
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)  # "forget" to restore the RNG
    second = trainer_for(tiny_config(corpus, *overrides), tmp_path / "b", resume=True, messages=[])
    second.fit()
    assert any(not torch.equal(a, b) for a, b in zip(straight.model.parameters(), second.model.parameters()))


def test_resume_of_a_finished_run_changes_nothing(tmp_path, corpus):
    config = tiny_config(corpus, "train.max_steps=5")
    trainer = trainer_for(config, tmp_path / "run")
    trainer.fit()
    before = final_parameters(trainer)
    again = trainer_for(tiny_config(corpus, "train.max_steps=5"), tmp_path / "run", resume=True, messages=[])
    result = again.fit()
    assert result.step == 5 and result.stop_reason == "max_steps"
    for name, value in final_parameters(again).items():
        assert torch.equal(value, before[name])


# ----------------------------------------------------------------------------- divergence never leaves a poisoned checkpoint
def test_weights_that_make_the_loss_diverge_are_not_kept_as_a_good_checkpoint(tmp_path, corpus):
    """train.lr=1e6: step 1's update leaves finite but huge weights whose loss at step 2 is NaN.
    The checkpoint of step 1 must not be named (or kept) as good: resuming from it diverges again."""
    config = tiny_config(corpus, "train.lr=1e6", "train.min_lr=0", "train.warmup_steps=0",
                         "train.checkpoint_every=1")
    with pytest.raises(LmlabError, match="diverged") as info:
        trainer_for(config, tmp_path / "run").fit()
    assert "no good checkpoint" in str(info.value) and "--resume" not in str(info.value)
    assert ckpt.list_checkpoints(tmp_path / "run") == []
    fresh = trainer_for(tiny_config(corpus), tmp_path / "run")  # the directory takes a new run
    assert fresh.fit().step == 60
    assert train_records(tmp_path / "run")[0]["step"] == 1  # and a fresh log


def test_the_checkpoint_named_after_divergence_really_is_good(tmp_path, corpus):
    config = tiny_config(corpus, "train.lr=1e3", "train.min_lr=0", "train.warmup_steps=0",
                         "train.checkpoint_every=1", "train.keep_checkpoints=100")
    trainer = trainer_for(config, tmp_path / "run")
    with pytest.raises(LmlabError, match="diverged") as info:
        trainer.fit()
    named = ckpt.list_checkpoints(tmp_path / "run")[-1]
    assert str(named) in str(info.value) and "--resume" in str(info.value)
    assert int(named.name.removeprefix("step-")) < trainer.step  # the diverging step's checkpoint is gone
    resumed = trainer_for(tiny_config(corpus), tmp_path / "run", resume=True, messages=[])
    assert math.isfinite(resumed.task.evaluate(resumed.model, 2, seed=0)["loss"])


def test_non_finite_weights_are_never_written_to_a_checkpoint(tmp_path, corpus, monkeypatch):
    config = tiny_config(corpus, "train.checkpoint_every=3", "train.eval_every=100")
    trainer = trainer_for(config, tmp_path / "run")
    real_step = trainer.optimizer.step

    def step_that_poisons_the_weights():
        real_step()
        if trainer.step + 1 == 6:
            with torch.no_grad():
                next(trainer.model.parameters())[0, 0] = float("inf")

    monkeypatch.setattr(trainer.optimizer, "step", step_that_poisons_the_weights)
    with pytest.raises(LmlabError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message and "diverged" in message and "inf or NaN" in message
    assert "step-00000003" in message
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step-00000003"]
    assert [p.name for p in (tmp_path / "run" / ckpt.CHECKPOINTS).iterdir()] == ["step-00000003"]


def test_between_steps_is_called_after_every_step_outside_its_timing(tmp_path, corpus):
    trainer = trainer_for(tiny_config(corpus, "train.max_steps=25"), tmp_path / "run")
    seen = []
    trainer.between_steps = lambda step: seen.append((step, len(trainer.step_seconds)))
    trainer.fit()
    assert seen == [(step, step) for step in range(1, 26)]  # each step already timed when it is called


def test_batches_are_drawn_from_the_seed_and_the_micro_batch_index(tmp_path, corpus):
    trainer = trainer_for(tiny_config(corpus, "train.grad_accum=2"), tmp_path / "run")
    trainer.step = 3
    ours = trainer.task.train_batch(trainer._batch_generator(1)).input_ids
    expected = torch.Generator().manual_seed(trainer.cfg.seed * 1_000_003 + 7)
    assert torch.equal(ours, trainer.task.train_batch(expected).input_ids)
    assert torch.equal(ours, trainer.task.train_batch(trainer_module.batch_generator(trainer.cfg.seed, 7)).input_ids)
