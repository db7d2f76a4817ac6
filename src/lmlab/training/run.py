"""Assemble a training run from a config (corpus → tokenizer → model → task → trainer), and load
trained runs back for generation, evaluation and inspection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmlab.data.corpora import load_corpus, split_train_val
from lmlab.data.shards import INDEX_FILE as SHARD_INDEX
from lmlab.data.shards import ShardedTokens
from lmlab.data.windows import TokenSpan, split_span, token_tensor
from lmlab.errors import LmlabError
from lmlab.models import ModelConfig, build_model
from lmlab.output_dir import DirectoryLock, claim_output_dir, lock_output_dir
from lmlab.tokenizers import CharTokenizer, Tokenizer, tokenizer_from_json, tokenizer_to_json
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed
from lmlab.training.config import RunConfig, check_fits_in_memory, check_objective_fits_arch
from lmlab.training.devices import inputs_on_model_device, resolve_device
from lmlab.training.lora import LORA_STATE, apply_saved_lora, merge_lora
from lmlab.training.objective_registry import ObjectiveTask, check_objective, tokens_needed
from lmlab.training.trainer import METRICS_FILE, Trainer

RUN_KIND = "run"  # the kind of output (see lmlab.output_dir) a training run directory is


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    model: nn.Module
    tokenizer: Tokenizer
    config: RunConfig
    state: dict[str, Any]  # the checkpoint's state.json
    checkpoint: Path


def token_splits(config: RunConfig, tokenizer: Tokenizer | None = None) -> tuple[Tokenizer, TokenSpan, TokenSpan]:
    """The run's tokenizer and its training and validation token spans.

    ``data.corpus`` is a corpus (name, file, directory, glob) split 90/10 by text, or a directory of
    token shards from ``lmlab data prepare`` (memory-mapped, so larger than RAM is fine) split by
    tokens. The tokenizer is the one given (a resumed run's), the shards', or a new one; it is
    checked against the objective before any text is encoded.
    """
    if (Path(config.data.corpus) / SHARD_INDEX).is_file():
        store = ShardedTokens.open(config.data.corpus)
        tokenizer = _checked(config, tokenizer or store.tokenizer())
        store.check_ids_below(tokenizer.vocab_size)
        train, val = split_span(store, config.data.val_fraction)
        return tokenizer, train, val
    text = load_corpus(config.data.corpus)
    tokenizer = _checked(config, tokenizer or build_tokenizer(config, text))
    train_text, val_text = split_train_val(text, config.data.val_fraction)
    train = TokenSpan(token_tensor(tokenizer.encode(train_text)), name="training")
    return tokenizer, train, TokenSpan(token_tensor(tokenizer.encode(val_text)), name="validation")


def _checked(config: RunConfig, tokenizer: Tokenizer) -> Tokenizer:
    check_objective(config.train.objective, _backbone_of(config), tokenizer, config.model.context_length)
    return tokenizer


def build_tokenizer(config: RunConfig, text: str) -> Tokenizer:
    """A character vocabulary of ``text`` (with the objective's special tokens), or the one
    ``data.tokenizer`` names (any :func:`~lmlab.interop.hub.resolve_tokenizer` takes)."""
    if config.data.tokenizer != "char":
        from lmlab.interop.hub import resolve_tokenizer

        return resolve_tokenizer(config.data.tokenizer)
    roles, extra = tokens_needed(config.train.objective, config.model.context_length)
    return CharTokenizer.from_text(text, unk=config.data.unk, special_tokens=roles, extra_tokens=extra)


def make_trainer(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> tuple[Trainer, Tokenizer]:
    """A :class:`Trainer` for ``config`` in ``out_dir`` and the run's tokenizer; with ``resume``,
    the trainer continues from the run's newest good checkpoint.

    ``out_dir`` must be new, empty or an lmlab run directory; it stays locked against other lmlab
    processes until the trainer's :meth:`~Trainer.fit` ends (or the process exits). Under torchrun
    (``train.distributed``) this process joins the run's process group; process 0 claims and
    locks the directory, and a setup error on any process stops all of them.
    """
    out_dir = Path(out_dir)
    config.train.validate()
    check_objective_fits_arch(config)
    processes = distributed.launched_processes(config.train.distributed)
    distributed.check_batch_split(processes, config.train)
    # an unavailable device fails before the directory is claimed
    device = resolve_device(distributed.process_device(processes, config.train.device))
    distributed.join(processes, device)
    echo = echo if processes.is_main else (lambda message: None)
    with distributed.together(processes):
        lock = claim_run_dir(out_dir, resume) if processes.is_main else None
    try:
        return _build_trainer(config, out_dir, resume, progress and processes.is_main, echo, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def claim_run_dir(out_dir: Path, resume: bool) -> DirectoryLock:
    """Claim ``out_dir`` as a run directory (see :func:`lmlab.output_dir.claim_output_dir`) and
    lock it for this process; with ``resume`` it must exist already."""
    if resume and not out_dir.is_dir():
        raise LmlabError(f"nothing to resume in {out_dir}: it does not exist; drop --resume to start a new run")
    claim_output_dir(out_dir, RUN_KIND, legacy_names=(ckpt.CHECKPOINTS, METRICS_FILE))
    return lock_output_dir(out_dir)


def _build_trainer(
    config: RunConfig,
    out_dir: Path,
    resume: bool,
    progress: bool,
    echo: Callable[[str], None],
    lock: DirectoryLock | None,
) -> tuple[Trainer, Tokenizer]:
    main = lock is not None  # the process that claimed the directory (process 0 under torchrun)
    with distributed.together(distributed.launched_processes(config.train.distributed)):
        start = _resume_point(out_dir, echo) if resume else None
        _refuse_to_overwrite(out_dir, resume)
        if start is None and main:  # a new run in a directory without checkpoints: no log of an earlier attempt
            (out_dir / METRICS_FILE).unlink(missing_ok=True)
        tokenizer = _stored_tokenizer(start) if start else None
        tokenizer, train_tokens, val_tokens = token_splits(config, tokenizer)
        config.model.vocab_size = tokenizer.vocab_size
        check_fits_in_memory(config)
        window = config.model.context_length
        torch.manual_seed(config.train.seed)
        model = build_model(config.model)
        task = ObjectiveTask(config.train.objective, tokenizer, train_tokens, val_tokens, config.train.batch_size, window)
        if main:
            ckpt.remove_partial_checkpoints(out_dir)
    extra = {"tokenizer": tokenizer_to_json(tokenizer)}
    trainer = Trainer(config, model, task, out_dir, extra_state=extra, progress=progress, echo=echo, lock=lock)
    if start is not None:
        trainer.restore(start)
        echo(f"resuming from {start} (step {trainer.step})")
    return trainer, tokenizer


def resume_config(out_dir: str | Path, echo: Callable[[str], None] = print) -> RunConfig:
    """The config stored in a run's newest good checkpoint (to continue it with ``--resume``)."""
    return RunConfig.from_dict(ckpt.read_state(_resume_point(Path(out_dir), echo))["config"])


def load_run(path: str | Path, echo: Callable[[str], None] = print, device: str = "cpu") -> LoadedRun:
    """Load a run directory (its newest good checkpoint) or one checkpoint directory — or a
    pretrained model: a Hugging Face model directory, a Hub model id or a GGUF file (see
    :func:`load_pretrained_run`) — with the model on ``device`` (any ``train.device`` value)."""
    run = _load_run_on_cpu(path, echo)
    run.model.to(resolve_device(device))
    return run


def _load_run_on_cpu(path: str | Path, echo: Callable[[str], None]) -> LoadedRun:
    from lmlab.interop.hub import resolve_model_path
    from lmlab.interop.pretrained import is_pretrained_path

    path = resolve_model_path(path)
    if not path.exists():
        raise LmlabError(f"{path} does not exist; pass a run directory written by 'lmlab train'")
    if is_pretrained_path(path):
        return load_pretrained_run(path)
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
    model = _checkpoint_model(checkpoint, config, state)
    model.eval()
    return LoadedRun(model, _stored_tokenizer(checkpoint), config, state, checkpoint)


def _checkpoint_model(checkpoint: Path, config: RunConfig, state: dict[str, Any]) -> nn.Module:
    """The model of a checkpoint; the LoRA adapters of a run tuned with them are merged into
    plain layers (generation and export then run the plain, full-speed modules)."""
    model = build_model(config.model)
    if LORA_STATE not in state:
        ckpt.load_weights(checkpoint, model)
        return model
    apply_saved_lora(model, state[LORA_STATE])
    ckpt.load_weights(checkpoint, model)
    return merge_lora(model).requires_grad_(True)  # a loaded run trains like any other


def load_pretrained_run(path: str | Path) -> LoadedRun:
    """A Hugging Face model directory or GGUF file as a :class:`LoadedRun`: its config is a
    default :class:`RunConfig` whose model section is the converted model config."""
    from lmlab.interop.pretrained import load_pretrained

    loaded = load_pretrained(path)
    if loaded.tokenizer is None:
        raise LmlabError(
            f"{path} has no tokenizer files (tokenizer.json, vocab.json+merges.txt, vocab.txt, "
            "tokenizer.model, ...); copy the model's tokenizer there"
        )
    config = RunConfig(model=loaded.model_config)
    state = {"step": 0, "family": loaded.family, "source": str(loaded.source)}
    return LoadedRun(loaded.model, loaded.tokenizer, config, state, Path(path))


def describe_model(model: nn.Module, config: ModelConfig) -> dict[str, Any]:
    """Parameter counts for ``lmlab info``."""
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "arch": config.arch, "backbone": config.backbone}


def evaluate_run(run: LoadedRun, corpus: str | None, split: str, batch_size: int,
                 progress: bool = False) -> dict[str, float]:
    """The run's objective metrics over every window of ``corpus`` — all of it — or, without a
    corpus, of the ``split`` (``"train"`` or ``"val"``) of the run's own corpus; a progress bar on
    stderr when ``progress`` and the evaluation is long."""
    config = run.config
    span = corpus_span(corpus, run.tokenizer) if corpus is not None else own_split(run, split)
    task = ObjectiveTask(config.train.objective, run.tokenizer, span, span, batch_size, config.model.context_length)
    with inputs_on_model_device(run.model):
        return task.evaluate_span(run.model, span, batch_size, seed=config.train.seed, progress=progress)


def corpus_span(corpus: str, tokenizer: Tokenizer) -> TokenSpan:
    """Every token of ``corpus`` (a corpus name, file, directory, glob or token shards), unsplit."""
    if (Path(corpus) / SHARD_INDEX).is_file():
        return TokenSpan(ShardedTokens.open(corpus), name="evaluation")
    return TokenSpan(token_tensor(tokenizer.encode(load_corpus(corpus))), name="evaluation")


def own_split(run: LoadedRun, split: str) -> TokenSpan:
    """The ``split`` (``"train"`` or ``"val"``) of the run's own corpus, as it trained."""
    _, train, val = token_splits(run.config, run.tokenizer)
    return val if split == "val" else train


def _backbone_of(config: RunConfig) -> str:
    """The backbone an objective sees (a GRU LM is a decoder)."""
    return "decoder" if config.model.arch == "gru" and config.model.backbone == "decoder" else config.model.backbone


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

__all__ = ["LoadedRun", "token_splits", "corpus_span", "describe_model", "evaluate_run", "load_pretrained_run", "load_run", "make_trainer", "resume_config"]
