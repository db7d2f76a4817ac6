"""Sharded checkpoints: what the processes of a run (:mod:`lmlab.training.distributed`) write
together through ``torch.distributed.checkpoint``, and reading them back.

The format (one ``shard-*.safetensors`` per process beside ``state.json`` and ``manifest.json``)
is described in :mod:`lmlab.training.checkpoint`, which recognises it
(:func:`~lmlab.training.checkpoint.is_sharded`) and verifies and loads it like any checkpoint. Here: the temporary
directory the processes write into, the collective write, its publication by process 0 (state,
manifest, rename into place, pruning) and the read, in place into a process's shards or whole.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from lmlab.training import checkpoint as ckpt


def sharded_temporary(run_dir: Path, step: int, pid: int) -> Path:
    """The temporary directory the processes write the checkpoint of ``step`` into (named after
    process 0's ``pid``, so :func:`~lmlab.training.checkpoint.remove_partial_checkpoints` recognises a leftover)."""
    return Path(run_dir) / ckpt.CHECKPOINTS / f".{ckpt.checkpoint_name(step)}.tmp-{pid}"


def prepare_sharded(run_dir: Path, tmp: Path, local_tensors: dict[str, torch.Tensor], world_size: int) -> None:
    """Make an empty ``tmp`` and room for about ``world_size`` parts the size of ``local_tensors``."""
    root = Path(run_dir) / ckpt.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    ckpt.make_room(Path(run_dir), ckpt.bytes_needed([local_tensors], {}) * world_size)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def write_sharded_tensors(tmp: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write this process's part of ``tensors`` (whole tensors, or DTensors' shards) into ``tmp``
    (a collective: every process of the run calls it)."""
    import torch.distributed.checkpoint as dcp  # imported when used: it takes seconds
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))


def publish_sharded(run_dir: Path, step: int, tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Complete the sharded checkpoint the processes wrote into ``tmp`` (its state and manifest)
    and rename it into place, then keep only the newest ``keep`` (process 0 alone calls this)."""
    try:
        ckpt.write_json(tmp / ckpt.STATE, {**state, "step": step})
        ckpt.write_json(tmp / ckpt.MANIFEST, {"step": step, "files": ckpt.describe_files(tmp)})
        ckpt.fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = Path(run_dir) / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)
    ckpt.replace_dir(tmp, final)
    ckpt.prune(Path(run_dir), keep)
    return final


def read_sharded_tensors(path: Path, targets: dict[str, torch.Tensor] | None = None,
                         prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a sharded checkpoint: loaded in place into ``targets`` (DTensors get this
    process's shard: a collective then), or, without targets, every tensor whose name starts with
    ``prefix``, whole, on the CPU, with no process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    whole = targets is None
    if whole:
        stored = HuggingFaceStorageReader(str(path)).read_metadata().state_dict_metadata
        targets = {name: torch.empty(meta.size, dtype=meta.properties.dtype)
                   for name, meta in stored.items() if name.startswith(prefix)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(path)), no_dist=whole)
    return targets
