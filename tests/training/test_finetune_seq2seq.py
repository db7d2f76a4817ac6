"""Sequence-to-sequence fine-tuning: an encoder-decoder learns to reverse strings, a decoder with a
prompt format learns a mapping with the loss on the target tokens only; continued pretraining."""

from __future__ import annotations

import random

import pytest
import torch

from finetune_fixtures import base_run, write_jsonl
from lmlab.objectives import IGNORE_INDEX
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.finetune_tasks import prompt_target_batch
from lmlab.training.finetuned import evaluate_finetuned, generate_targets, load_finetuned


def strings(count: int, seed: int, target) -> list[dict]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(3, 5))) for _ in range(count)]
    return [{"source": w, "target": target(w)} for w in words]


def test_an_encoder_decoder_learns_to_reverse_strings(tmp_path):
    torch.set_num_threads(1)
    base = base_run(tmp_path, "span-corruption")
    train = write_jsonl(tmp_path / "train.jsonl", strings(1600, 0, lambda w: w[::-1]))
    val = write_jsonl(tmp_path / "val.jsonl", strings(50, 1, lambda w: w[::-1]))
    result = finetune(FinetuneConfig(model=str(base), task="seq2seq", data=str(train), val=str(val),
                                     out=str(tmp_path / "run"), lr=2e-3, epochs=10, batch_size=32,
                                     max_new_tokens=8), progress=False)
    assert result.last_eval["exact_match"] >= 0.9
    tuned = load_finetuned(result.best)
    assert generate_targets(tuned, ["abcde"]) == ["edcba"]
    assert evaluate_finetuned(tuned, val)["exact_match"] >= 0.9


def test_prompt_batches_take_the_loss_on_the_target_and_eos_only():
    batch = prompt_target_batch([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], eos_id=0, pad_id=99)
    # row 0: prompt 5 6 7, target 1 2, EOS 0 → inputs 5 6 7 1 2; labels (ignored, ignored, 1, 2, 0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 99]]
    I = IGNORE_INDEX
    assert batch.labels.tolist() == [[I, I, 1, 2, 0], [3, 4, 9, 0, I]]


WORDS = {"cat": "chat", "dog": "chien", "red": "rouge", "big": "grand", "sun": "soleil", "hat": "chapeau",
         "mat": "tapis", "sea": "mer"}


def translations(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"source": w, "target": WORDS[w]} for w in (rng.choice(sorted(WORDS)) for _ in range(count))]


def test_a_decoder_with_a_prompt_format_learns_a_mapping(tmp_path):
    torch.set_num_threads(1)
    base = base_run(tmp_path, "causal-lm")
    train = write_jsonl(tmp_path / "train.jsonl", translations(320, 0))
    val = write_jsonl(tmp_path / "val.jsonl", translations(40, 1))
    result = finetune(FinetuneConfig(model=str(base), task="seq2seq", data=str(train), val=str(val),
                                     out=str(tmp_path / "run"), prompt_format="{source}: ", lr=3e-3, epochs=8,
                                     batch_size=16, max_new_tokens=10), progress=False)
    assert result.last_eval["exact_match"] >= 0.9
    assert generate_targets(load_finetuned(result.best), ["sun", "dog"]) == ["soleil", "chien"]


def test_continued_pretraining_lowers_the_loss_on_the_users_text(tmp_path):
    torch.set_num_threads(1)
    base = base_run(tmp_path, "causal-lm")
    docs = tmp_path / "docs"
    docs.mkdir()
    for k in range(12):
        (docs / f"{k:02d}.txt").write_text("The cat sat on the mat. " * 4)
    result = finetune(FinetuneConfig(model=str(base), task="causal-lm", data=str(docs), out=str(tmp_path / "run"),
                                     val_fraction=0.25, lr=3e-3, max_steps=40, batch_size=4), progress=False)
    tuned = load_finetuned(tmp_path / "run")
    assert tuned.task == "causal-lm" and result.last_eval["loss"] < 1.0
    assert evaluate_finetuned(tuned, docs)["loss"] == pytest.approx(result.last_eval["loss"], rel=0.2)
