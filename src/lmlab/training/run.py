"""Assemble a training run from a config (corpus → tokenizer → model → task → trainer), and load
trained runs back for generation, evaluation and inspection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmlab.data.corpora import load_corpus, split_train_val
from lmlab.data.windows import token_tensor
from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model
from lmlab.tokenizers import CharTokenizer, Tokenizer, tokenizer_from_json, tokenizer_to_json
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import RunConfig
from lmlab.training.tasks import CausalLMTask
from lmlab.training.trainer import Trainer


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    model: nn.Module
    tokenizer: Tokenizer
    config: RunConfig
    state: dict[str, Any]  # the checkpoint's state.json
    checkpoint: Path


def corpus_splits(config: RunConfig, tokenizer: Tokenizer | None = None) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """Read the corpus, build (or reuse) the tokenizer, and tokenise the train/val split."""
    text = load_corpus(config.data.corpus)
    if tokenizer is None:
        tokenizer = CharTokenizer.from_text(text, unk=config.data.unk)
    train_text, val_text = split_train_val(text, config.data.val_fraction)
    return tokenizer, token_tensor(tokenizer.encode(train_text)), token_tensor(tokenizer.encode(val_text))


def make_trainer(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> tuple[Trainer, Tokenizer]:
    """A :class:`Trainer` for ``config`` in ``out_dir`` and the run's tokenizer; with ``resume``,
    the trainer continues from the run's newest good checkpoint."""
    out_dir = Path(out_dir)
    start = _resume_point(out_dir, echo) if resume else None
    _refuse_to_overwrite(out_dir, resume)
    tokenizer = _stored_tokenizer(start) if start else None
    tokenizer, train_tokens, val_tokens = corpus_splits(config, tokenizer)
    config.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    task = CausalLMTask(train_tokens, val_tokens, config.train.batch_size, config.model.context_length)
    extra = {"tokenizer": tokenizer_to_json(tokenizer)}
    trainer = Trainer(config, model, task, out_dir, extra_state=extra, progress=progress, echo=echo)
    ckpt.remove_partial_checkpoints(out_dir)
    if start is not None:
        trainer.restore(start)
        echo(f"resuming from {start} (step {trainer.step})")
    return trainer, tokenizer


def resume_config(out_dir: str | Path, echo: Callable[[str], None] = print) -> RunConfig:
    """The config stored in a run's newest good checkpoint (to continue it with ``--resume``)."""
    return RunConfig.from_dict(ckpt.read_state(_resume_point(Path(out_dir), echo))["config"])


def load_run(path: str | Path, echo: Callable[[str], None] = print) -> LoadedRun:
    """Load a run directory (its newest good checkpoint) or one checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path} does not exist; pass a run directory written by 'lmlab train'")
    if (path / ckpt.MANIFEST).is_file():
        ckpt.verify_checkpoint(path)
        checkpoint = path
    else:
        checkpoint = ckpt.latest_good_checkpoint(path, echo)
        if checkpoint is None:
            raise LmlabError(
                f"{path} holds no usable checkpoint ({ckpt.why_no_good_checkpoint(path)}); "
                f"train one with 'lmlab train --out {path}'"
            )
    state = ckpt.read_state(checkpoint)
    config = RunConfig.from_dict(state["config"])
    model = build_model(config.model)
    ckpt.load_weights(checkpoint, model)
    model.eval()
    return LoadedRun(model, _stored_tokenizer(checkpoint), config, state, checkpoint)


def describe_model(model: nn.Module, config: ModelConfig) -> dict[str, Any]:
    """Parameter counts for ``lmlab info``."""
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "arch": config.arch, "backbone": config.backbone}


def _stored_tokenizer(checkpoint: Path) -> Tokenizer:
    return tokenizer_from_json(ckpt.read_state(checkpoint)["tokenizer"])


def _resume_point(out_dir: Path, echo: Callable[[str], None]) -> Path:
    start = ckpt.latest_good_checkpoint(out_dir, echo)
    if start is None:
        raise LmlabError(
            f"nothing to resume in {out_dir}: {ckpt.why_no_good_checkpoint(out_dir)}; "
            "drop --resume to start a new run"
        )
    return start


def _refuse_to_overwrite(out_dir: Path, resume: bool) -> None:
    if not resume and ckpt.list_checkpoints(out_dir):
        raise LmlabError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )

__all__ = ["LoadedRun", "corpus_splits", "describe_model", "load_run", "make_trainer", "resume_config"]
