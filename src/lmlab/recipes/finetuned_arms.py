"""What the task recipes (translation, sentiment) share: held-out splits written as JSONL files,
models trained from scratch through the fine-tuning path (a step-0 run of a freshly initialised
model that ``lmlab finetune`` then trains), and the ``lmlab finetune`` command that reproduces
an arm.

Every arm of a task recipe is a fine-tuning run, so ``lmlab classify``, ``lmlab seq2seq`` and
``lmlab eval`` work on it, and ``--resume`` continues it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model
from lmlab.output_dir import claim_output_dir
from lmlab.tokenizers import Tokenizer, tokenizer_to_json
from lmlab.training import checkpoint as ckpt
from lmlab.training.config import RunConfig
from lmlab.training.finetune import FinetuneConfig, finetune
from lmlab.training.finetuned import FinetunedRun, load_finetuned
from lmlab.training.run import RUN_KIND
from lmlab.training.selection import BEST_DIR
from lmlab.training.trainer import METRICS_FILE
from lmlab.viz.confusion import require_matplotlib

INIT_DIR = "init"  # OUT/init/ARM: the step-0 run an arm trained from scratch starts from
SPLITS_DIR = "splits"  # OUT/splits/{train,val,test}.jsonl
# FinetuneConfig fields that are not flags of `lmlab finetune` or are given positionally
_NOT_FLAGS = {"model", "task", "data", "out", "resume", "truncate"}


@dataclasses.dataclass(frozen=True)
class Splits:
    """Indices of the training, validation (model selection) and test (the report) examples."""

    train: list[int]
    val: list[int]
    test: list[int]


def three_way_split(count: int, test_size: int, val_size: int, train_size: int, seed: int, what: str) -> Splits:
    """Seeded disjoint random splits of ``count`` examples: ``test_size`` and ``val_size`` held
    out (each at most a fifth of ``count``, at least one) and up to ``train_size`` of the rest
    for training; too few examples is an error naming ``what``."""
    if count < 5:
        raise LmlabError(f"{what}: {count} examples left, too few to split into training, validation and "
                         f"test sets; give at least 5 (better hundreds)")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    test = max(1, min(test_size, count // 5))
    val = max(1, min(val_size, count // 5))
    train = order[test + val:test + val + train_size]
    return Splits(sorted(train), sorted(order[test:test + val]), sorted(order[:test]))


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object a line (UTF-8, no escaping of non-ASCII)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dict(record), ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def initial_run(directory: Path, model_config: ModelConfig, tokenizer: Tokenizer, seed: int) -> Path:
    """A run directory holding one step-0 checkpoint of a new ``model_config`` model (weights
    seeded by ``seed``, vocabulary from ``tokenizer``): what ``lmlab finetune`` trains from
    scratch. An existing one (a resumed recipe) is kept."""
    if ckpt.list_checkpoints(directory):
        return directory
    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = build_model(model_config)
    claim_output_dir(directory, RUN_KIND)
    state = {"config": RunConfig(model=model_config).to_dict(), "tokenizer": tokenizer_to_json(tokenizer)}
    ckpt.save_checkpoint(directory, 0, model, None, state)
    return directory


def run_finetune(config: FinetuneConfig, resume: bool, echo) -> dict[str, Any]:
    """Fine-tune (or continue, with ``resume``) and return how the run ended."""
    result = finetune(dataclasses.replace(config, resume=resume), progress=False, echo=echo)
    return {"steps": result.step, "stop_reason": result.stop_reason,
            "trainable_parameters": result.trainable, "truncated": result.truncated}


def trained(run_dir: Path) -> FinetunedRun:
    """The arm's best checkpoint by its validation metric (``RUN/best``), else its newest."""
    best = run_dir / BEST_DIR
    return load_finetuned(best if ckpt.list_checkpoints(best) else run_dir, echo=lambda _: None)


def validation_points(run_dir: Path) -> list[dict[str, float]]:
    """The run's evaluations from its ``metrics.jsonl``: ``{"step", "elapsed_s", "val_loss"}`` each."""
    rows = (json.loads(line) for line in (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines() if line)
    return [{key: row[key] for key in ("step", "elapsed_s", "val_loss")} for row in rows
            if row.get("kind") == "eval" and "val_loss" in row]


def plot_curves(path: Path, run_dirs: Mapping[str, Path]) -> str:
    """Draw the runs' validation-loss curves overlaid (against step and seconds) into ``path``
    (PNG); returns its file name. matplotlib is imported only here."""
    require_matplotlib()
    from lmlab.viz.curves import plot_validation_curves

    plot_validation_curves({name: validation_points(directory) for name, directory in run_dirs.items()}, path)
    return path.name


def finetune_command(config: FinetuneConfig) -> str:
    """The ``lmlab finetune`` command line that trains ``config`` (flags for non-default settings)."""
    defaults = FinetuneConfig(model="", task="", data="", out="")
    words = ["lmlab", "finetune", config.model, "--task", config.task, "--data", config.data]
    for field in dataclasses.fields(FinetuneConfig):
        value = getattr(config, field.name)
        if field.name in _NOT_FLAGS or value == getattr(defaults, field.name) or value is None:
            continue
        words += [f"--{field.name.replace('_', '-')}", str(value)]
    if not config.truncate:
        words.append("--no-truncate")
    return " ".join(shlex.quote(word) for word in [*words, "--out", config.out])
