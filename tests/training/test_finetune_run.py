"""What every fine-tuning run shares: epoch plans, exact resume, early stopping, the best
checkpoint, truncation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune_fixtures import base_run, keyword_texts, write_csv
from lmlab.errors import LmlabError
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.task_data import BatchSize, EpochPlan, split_indices


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.set_num_threads(1)
    return base_run(tmp_path_factory.mktemp("base"), "mlm")


@pytest.fixture()
def data(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], keyword_texts(96, seed=0))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], keyword_texts(32, seed=1))
    return train, val


def test_epoch_plans_depend_on_seed_and_epoch_only():
    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10] * 3
    plan, again = EpochPlan(lengths, BatchSize(examples=4), seed=1), EpochPlan(lengths, BatchSize(examples=4), seed=1)
    assert plan.epoch(1) == again.epoch(1) and plan.epoch(0) != plan.epoch(1)
    assert sorted(i for batch in plan.epoch(0) for i in batch) == list(range(30))
    assert plan.batch(len(plan.epoch(0))) == plan.epoch(1)[0]


def test_token_budget_batches_hold_similar_lengths_within_the_budget():
    lengths = [(i * 7) % 23 + 1 for i in range(200)]
    plan = EpochPlan(lengths, BatchSize(max_tokens=64), seed=0)
    for batch in plan.epoch(0):
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64


def test_a_seeded_split_holds_out_the_fraction():
    train, val = split_indices(50, 0.2, seed=4)
    assert len(val) == 10 and sorted(train + val) == list(range(50))
    assert (train, val) == split_indices(50, 0.2, seed=4)


def _config(encoder, data, out, **overrides):
    settings = dict(model=str(encoder), task="classify", data=str(data[0]), val=str(data[1]), out=str(out),
                    lr=3e-3, batch_size=8, checkpoint_every=5)
    return FinetuneConfig(**{**settings, **overrides})


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, encoder, data):
    finetune(_config(encoder, data, tmp_path / "whole", max_steps=30), progress=False)
    finetune(_config(encoder, data, tmp_path / "split", max_steps=17), progress=False)
    result = finetune(_config(encoder, data, tmp_path / "split", max_steps=30, resume=True), progress=False)
    assert result.step == 30
    whole = load_file(tmp_path / "whole/checkpoints/step-00000030/model.safetensors")
    split = load_file(tmp_path / "split/checkpoints/step-00000030/model.safetensors")
    assert all(torch.equal(whole[name], split[name]) for name in whole)


def test_evaluation_runs_at_each_epoch_end_and_early_stopping_ends_the_run(tmp_path, encoder, data):
    result = finetune(_config(encoder, data, tmp_path / "run", epochs=50, eval_every=1000, lr=1e-2,
                              early_stopping_patience=2), progress=False)
    evals = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert result.stop_reason == "early_stopping" and result.step < 50 * 12
    assert [e["step"] for e in evals] == [12 * (k + 1) for k in range(len(evals))]  # 96 examples / 8 a batch
    best = max(evals, key=lambda e: e["val_accuracy"])
    assert (result.best / "checkpoints" / f"step-{best['step']:08d}").is_dir()


def test_long_texts_are_truncated_and_counted_or_refused(tmp_path, encoder, data):
    long_rows = keyword_texts(20, seed=2) + [("cat " * 40, "no")]
    train = write_csv(tmp_path / "long.csv", ["text", "label"], long_rows)
    result = finetune(_config(encoder, (train, data[1]), tmp_path / "run", max_steps=2), progress=False)
    assert result.truncated == 1
    with pytest.raises(LmlabError, match="data row 21 has 160 tokens, more than the model's 48"):
        finetune(_config(encoder, (train, data[1]), tmp_path / "refused", max_steps=2, truncate=False), progress=False)
    assert not (tmp_path / "refused").exists()
