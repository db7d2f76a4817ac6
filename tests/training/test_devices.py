"""Devices, precision, activation checkpointing and the speed report, on the CPU.

CUDA itself is not here: what these tests can check is that an unavailable device is a one-line
error, that the mixed-precision and checkpointing paths train correctly on the CPU, and that every
run reports its speed.
"""

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.kernels import onednn_linear
from lmlab.models import ModelConfig, build_model
from lmlab.training import checkpoint as ckpt
from lmlab.training import reports
from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.devices import checkpoint_activations, placement_for, resolve_device
from lmlab.training.run import make_trainer
from lmlab.training.trainer import GRAD_SCALER_KEY, METRICS_FILE

TEXT = "the quick brown fox jumps over the lazy dog. " * 30 + "\n" + "pack my box with five dozen jugs. " * 20
REPORT_FIELDS = ("tokens_per_s", "flops_per_token", "mfu", "peak_memory_bytes")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def tiny_config(corpus, *overrides: str) -> RunConfig:
    config = RunConfig()
    apply_overrides(config, [
        f"data.corpus={corpus}", "model.n_layer=1", "model.n_head=2", "model.d_model=32",
        "model.context_length=16", "model.dropout=0.0", "train.batch_size=8", "train.lr=3e-3",
        "train.min_lr=3e-4", "train.warmup_steps=5", "train.max_steps=40", "train.eval_every=20",
        "train.eval_batches=2", "train.checkpoint_every=20", "train.sample_chars=0", *overrides,
    ])
    return config


def trainer_for(config, run_dir, resume=False, messages=None):
    trainer, _ = make_trainer(config, run_dir, resume=resume, progress=False,
                              echo=messages.append if messages is not None else print)
    return trainer


def train_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    return [row for row in rows if row["kind"] == "train"]


def cli(*argv):
    out, errors = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(errors):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), errors.getvalue()


# ----------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_an_unavailable_device_is_a_one_line_error_with_exit_2(tmp_path, corpus):
    code, out, errors = cli("train", "--data", corpus, "--out", tmp_path / "run", "--device", "cuda",
                            "--max-steps", "2", "--no-progress")
    assert code == 2 and out == ""
    assert errors.count("\n") == 1 and "cuda" in errors and "--device cpu" in errors
    assert not (tmp_path / "run").exists()  # refused before the directory was claimed


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(LmlabError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    config = RunConfig()
    with pytest.raises(LmlabError, match="train.device must be"):
        apply_overrides(config, ["train.device=tpu"]).train.validate()
    with pytest.raises(LmlabError, match="train.compile must be"):
        apply_overrides(RunConfig(), ["train.compile=sometimes"]).train.validate()
    with pytest.raises(LmlabError, match="train.precision must be one of"):
        apply_overrides(RunConfig(), ["train.precision=fp8"])


def test_compile_defaults_to_off_on_the_cpu():
    assert placement_for("cpu", "fp32", "auto").compile is False
    assert placement_for("cpu", "fp32", True).compile is True


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_bfloat16_precisions_train_with_falling_loss(tmp_path, corpus, precision):
    trainer = trainer_for(tiny_config(corpus, f"train.precision={precision}"), tmp_path / "run")
    expected_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert next(trainer.model.parameters()).dtype == expected_dtype
    result = trainer.fit()
    losses = [row["loss"] for row in train_rows(tmp_path / "run")]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0]
    assert result.report["precision"] == precision
    ckpt.verify_checkpoint(result.checkpoint)


def test_fp16_mixed_trains_on_the_cpu_and_checkpoints_its_scaler(tmp_path, corpus):
    config = tiny_config(corpus, "train.precision=fp16-mixed", "train.max_steps=20", "train.checkpoint_every=10")
    trainer = trainer_for(config, tmp_path / "run")
    result = trainer.fit()
    losses = [row["loss"] for row in train_rows(tmp_path / "run")]
    assert losses[-1] < losses[0]
    saved = ckpt.read_state(result.checkpoint)[GRAD_SCALER_KEY]
    assert saved == trainer.scaler.state_dict() and saved["scale"] > 0
    resumed = trainer_for(config, tmp_path / "run", resume=True, messages=[])
    assert resumed.scaler.state_dict() == saved


# ----------------------------------------------------------------------------- oneDNN linear
@pytest.mark.parametrize("precision, compile_setting, expected", [
    ("fp32", "auto", True), ("fp32-strict", "auto", True), ("bf16-mixed", "auto", False), ("bf16", "auto", False),
    ("fp32", True, False),
])
def test_float32_eager_steps_on_the_cpu_take_the_onednn_linear(monkeypatch, precision, compile_setting, expected):
    monkeypatch.setattr(onednn_linear, "onednn_linear_available", lambda: True)
    layer = torch.nn.Linear(8, 4).to(placement_for("cpu", precision, "auto").weight_dtype)
    x = torch.randn(3, 8, dtype=layer.weight.dtype)
    with placement_for("cpu", precision, compile_setting).kernels():
        out = layer(x)
    assert ("OneDnnLinear" in out.grad_fn.name()) is expected


@pytest.mark.skipif(not onednn_linear.onednn_operator_works(), reason="this PyTorch has no oneDNN linear operator")
def test_training_through_the_onednn_linear_follows_the_plain_losses(tmp_path, corpus, monkeypatch):
    config = tiny_config(corpus, "train.max_steps=15", "train.checkpoint_every=100", "train.eval_every=100")
    monkeypatch.setenv("LMLAB_NATIVE_KERNELS", "0")
    trainer_for(config, tmp_path / "plain").fit()
    monkeypatch.delenv("LMLAB_NATIVE_KERNELS")
    monkeypatch.setattr(onednn_linear, "onednn_linear_available", lambda: True)
    trainer_for(config, tmp_path / "onednn").fit()
    plain = [row["loss"] for row in train_rows(tmp_path / "plain")]
    fast = [row["loss"] for row in train_rows(tmp_path / "onednn")]
    assert len(fast) == len(plain) >= 2
    assert fast == pytest.approx(plain, rel=1e-5)


# ----------------------------------------------------------------------------- activation checkpointing
def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    config = ModelConfig(n_layer=2, n_head=2, d_model=32, context_length=16, vocab_size=40, dropout=0.1)
    torch.manual_seed(0)
    plain = build_model(config)
    checkpointed = build_model(config)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_activations(checkpointed) == 2
    ids = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))

    def loss_and_grads(model):
        torch.manual_seed(7)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in model.named_parameters()}

    plain_loss, plain_grads = loss_and_grads(plain)
    loss, grads = loss_and_grads(checkpointed)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-7, msg=name)
    assert set(checkpointed.state_dict()) == set(plain.state_dict())  # names unchanged


# ----------------------------------------------------------------------------- torch.compile
@pytest.mark.slow
def test_a_compiled_run_trains_reports_its_compile_time_and_gives_the_eager_logits(tmp_path, corpus):
    """One compilation (they are slow): the training run's, reused for the logits check."""
    config = tiny_config(corpus, "train.compile=true", "train.max_steps=20", "train.eval_every=10")
    trainer = trainer_for(config, tmp_path / "run")
    result = trainer.fit()
    if not result.report["compiled"]:
        pytest.skip("torch.compile cannot run here (no working compiler toolchain)")
    assert result.report["compile_s"] > 0
    rows = train_rows(tmp_path / "run")
    assert rows[0]["step"] == 1 and rows[0]["compile_s"] == result.report["compile_s"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    ids = trainer.task.train_batch(torch.Generator().manual_seed(0)).input_ids
    trainer.model.train()  # the mode and shapes the model was compiled for
    torch.testing.assert_close(trainer._forward_model(ids), trainer.model(ids), rtol=0, atol=1e-5)


class FailsAfterForward(torch.nn.Module):
    """A stand-in for a compiled model whose compilation fails after the forward pass ran (and
    drew dropout masks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        self.model(*args, **kwargs)
        raise RuntimeError("backend failed\nwith a long traceback")


def test_a_model_that_cannot_compile_falls_back_with_one_warning_and_no_trace(tmp_path, corpus, monkeypatch):
    settings = ("model.dropout=0.2", "train.max_steps=4")
    plain = trainer_for(tiny_config(corpus, *settings), tmp_path / "plain")
    plain.fit()
    monkeypatch.setattr(torch, "compile", FailsAfterForward)
    messages = []
    fallback = trainer_for(tiny_config(corpus, *settings, "train.compile=true"), tmp_path / "run", messages=messages)
    result = fallback.fit()
    assert result.step == 4 and result.report["compiled"] is False
    assert [m for m in messages if "torch.compile" in m] == [
        "warning: torch.compile failed (backend failed); training without it"]
    for (name, expected), actual in zip(plain.model.state_dict().items(), fallback.model.state_dict().values()):
        assert torch.equal(expected, actual), name  # the RNG and gradients are as if it never ran


# ----------------------------------------------------------------------------- reports
def test_flops_per_token_matches_a_hand_count():
    L, d, T, V = 2, 32, 16, 50
    model = build_model(ModelConfig(n_layer=L, n_head=2, d_model=d, context_length=T, vocab_size=V))
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    n = L * per_block + 2 * d + V * d  # blocks, final norm, the tied head; no position table
    assert reports.matmul_parameters(model) == n
    assert reports.flops_per_token(model, T) == 6 * n + 12 * L * T * d


def test_every_run_reports_its_speed_in_the_log_and_the_summary(tmp_path, corpus):
    code, out, errors = cli("train", "--data", corpus, "--out", tmp_path / "run", "--max-steps", "10",
                            "--no-progress", "--device", "cpu", "--set", "model.n_layer=1", "model.d_model=32",
                            "model.n_head=2", "model.context_length=16", "train.batch_size=4",
                            "train.eval_every=5", "train.eval_batches=1", "train.sample_chars=0")
    assert code == 0, errors
    summary = json.loads(out.splitlines()[0])
    for name in (*REPORT_FIELDS, "device", "precision", "compiled", "peak_flops"):
        assert name in summary, name
    assert summary["device"] == "cpu" and summary["peak_flops_source"] == "measured"
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1 and summary["peak_memory_bytes"] > 0
    rows = train_rows(tmp_path / "run")
    assert rows and all(all(row[name] is not None for name in REPORT_FIELDS) for row in rows)
    assert all(row["flops_per_token"] == summary["flops_per_token"] for row in rows)


def test_the_cpu_peak_leaves_the_global_rng_alone():
    reports.measured_cpu_peak.cache_clear()
    before = torch.get_rng_state()
    assert reports.measured_cpu_peak(torch.float32) > 0
    assert torch.equal(torch.get_rng_state(), before)
