"""Tiny lmlab runs to fine-tune, and synthetic task data, made in the tests."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch

from lmlab.training.config import RunConfig, apply_overrides
from lmlab.training.run import make_trainer

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\n"
BACKBONES = {"mlm": "encoder", "causal-lm": "decoder", "span-corruption": "encoder-decoder"}


def base_run(directory: Path, objective: str, **overrides) -> Path:
    """A tiny lmlab run (d_model 32, 2 layers, one training step) over a character vocabulary
    that covers ``ALPHABET``, with the objective's special tokens."""
    corpus = directory / "alphabet.txt"
    corpus.write_text(ALPHABET * 40)
    settings = {
        "data.corpus": str(corpus), "train.objective": objective, "model.backbone": BACKBONES[objective],
        "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32, "model.context_length": 48,
        "model.dropout": 0.0, "train.batch_size": 2, "train.max_steps": 1, "train.warmup_steps": 0,
        "train.eval_every": 1000, "train.eval_batches": 1, "train.sample_chars": 0, **overrides,
    }
    config = apply_overrides(RunConfig(), [f"{k}={v}" for k, v in settings.items()])
    torch.manual_seed(0)
    out = directory / f"base-{objective}"
    trainer, _ = make_trainer(config, out, progress=False)
    trainer.fit()
    return out


def keyword_texts(count: int, seed: int) -> list[tuple[str, str]]:
    """(text, label): label "yes" when the text holds the word "sun", else "no"."""
    rng = random.Random(seed)
    words = ["cat", "dog", "red", "big", "mat", "hat"]
    rows = []
    for index in range(count):
        chosen = [rng.choice(words) for _ in range(rng.randint(3, 6))]
        if index % 2:
            chosen[rng.randrange(len(chosen))] = "sun"
        rows.append((" ".join(chosen), "yes" if index % 2 else "no"))
    return rows


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
