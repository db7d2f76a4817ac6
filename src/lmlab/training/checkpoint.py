"""Checkpoints that are never half-written and that resume training exactly.

A checkpoint is a directory ``RUN_DIR/checkpoints/step-00000100/`` holding

- ``model.safetensors``: the weights (a tied weight stored once);
- ``optimizer.safetensors``: the optimizer's tensors and the RNG states (CPU, and CUDA when in use);
- ``state.json``: step, config, tokenizer, optimizer hyper-parameters, trainer counters;
- ``manifest.json``: size and sha256 of each file above, written last.

A run of many processes (:mod:`lmlab.training.distributed`) writes a *sharded* checkpoint instead:
``shard-NNNNN-model-00001-of-00001.safetensors``, one per process, written through
``torch.distributed.checkpoint``'s safetensors writer (each holds that process's part of the
weights, ``model/NAME``, the optimizer state, ``optim/NAME/KEY``, and the RNG state; where each
part sits in the whole tensor is JSON in the file's header, so reading one unpickles nothing),
beside ``state.json`` (parameter groups by parameter name) and ``manifest.json``. It is read
whole, with no process group, by :func:`load_weights` (for ``generate``, ``convert``, ...); its
writing and reading are in :mod:`lmlab.training.sharded_checkpoint`.

It is written to a temporary directory and renamed into place, so a crash leaves either the
whole checkpoint or none; a failed write (a full disk) removes its temporary directory. Only
finite weights and optimizer state are written. Loading verifies the manifest and state against
their schema, the files against the manifest and the weights for inf/NaN; a checkpoint failing
any of this is reported and the newest good one is used instead. lmlab deletes only what it
wrote here: ``step-NNNNNNNN`` directories and its own ``.step-NNNNNNNN.tmp-PID`` leftovers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmlab.errors import LmlabError, read_json_file

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_KEY = "rng.torch_cpu"
CUDA_RNG_KEY = "rng.torch_cuda"  # the current CUDA device's generator, when CUDA is in use
CHECKPOINT_NAME = re.compile(r"step-\d{8}")
SHARD_FILE = re.compile(r"shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors")  # one process's part
MODEL_TENSORS = "model/"  # the prefix of the weights' names in a sharded checkpoint
LEFTOVER_NAME = re.compile(r"\.step-\d{8}\.(tmp|old)-\d+")  # what an interrupted write leaves
METADATA_BYTES = 1 << 16  # what a checkpoint needs beyond its tensors and state: the manifest, ...
HEADER_BYTES_PER_TENSOR = 256  # ... and the safetensors headers


class NonFiniteState(LmlabError):
    """Weights or optimizer state hold inf or NaN, so they must not become a checkpoint."""


@dataclass
class TrainingSnapshot:
    """What a checkpoint restores besides the weights."""

    step: int
    state: dict[str, Any]  # the parsed state.json
    optimizer_state: dict[str, Any] | None  # ready for optimizer.load_state_dict
    rng_state: torch.Tensor | None
    cuda_rng_state: torch.Tensor | None = None  # the CUDA generator's, for a run that used CUDA


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 3,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint for ``step`` atomically, then keep only the newest ``keep``.
    ``write_extra(directory)`` writes further files of the checkpoint (a LoRA run's adapters) into
    it before the manifest, which lists and checksums them too.

    Raises :class:`NonFiniteState`, writing nothing, when a weight or optimizer tensor holds inf or
    NaN. When the disk lacks room, checkpoints other than the newest good one are deleted (oldest
    first) if that makes enough; if it cannot, or the write still fails for want of space, the
    partial write is removed and a one-line :class:`LmlabError` gives the space needed and free.
    """
    model_tensors, aliases = _model_tensors(model)
    _refuse_non_finite(model_tensors, "weights")
    optimizer_tensors = None
    if optimizer is not None:
        optimizer_tensors, groups = _flatten_optimizer(optimizer.state_dict())
        _refuse_non_finite(optimizer_tensors, "optimizer state")
        optimizer_tensors[RNG_KEY] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            optimizer_tensors[CUDA_RNG_KEY] = torch.cuda.get_rng_state()
        state = {**state, "optimizer_param_groups": groups}
    state = {**state, "step": step}
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    needed = bytes_needed([model_tensors, optimizer_tensors or {}], state)
    make_room(Path(run_dir), needed)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        _write_checkpoint_files(tmp, model_tensors, aliases, optimizer_tensors, state, write_extra)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(exc):
            raise _disk_full_error(root, needed) from None
        raise
    replace_dir(tmp, final)
    prune(Path(run_dir), keep)
    return final


def _write_checkpoint_files(
    tmp: Path,
    model_tensors: dict[str, torch.Tensor],
    aliases: dict[str, str],
    optimizer_tensors: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """Every file of a checkpoint, in ``tmp`` (made afresh), the manifest last, all fsynced."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_tensors, str(tmp / MODEL_FILE), metadata=aliases)
    if optimizer_tensors is not None:
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
    write_json(tmp / STATE, state)
    if write_extra is not None:
        write_extra(tmp)
    write_json(tmp / MANIFEST, {"step": state["step"], "files": describe_files(tmp)})
    fsync_dir(tmp)


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold inf or NaN.

    One fused norm per tensor (``torch._foreach_norm``) flags candidates; only a flagged tensor is
    checked element-wise, since the norm of large finite values can overflow.
    """
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel():
            by_device.setdefault(tensor.device, []).append((name, tensor))
    bad = []
    for named in by_device.values():
        norms = torch._foreach_norm([tensor for _, tensor in named])
        finite = torch.stack([norm.float() for norm in norms]).isfinite().tolist()
        bad += [name for (name, tensor), ok in zip(named, finite) if not ok and not tensor.isfinite().all()]
    return bad


def _refuse_non_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = non_finite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteState(f"the {what} hold inf or NaN ({bad[0]}{more})")


def bytes_needed(tensor_sets: list[dict[str, torch.Tensor]], state: dict[str, Any]) -> int:
    """About the bytes a checkpoint takes on disk: its tensors, its JSON files and headers."""
    tensors = [t for tensor_set in tensor_sets for t in tensor_set.values()]
    tensor_bytes = sum(t.numel() * t.element_size() + HEADER_BYTES_PER_TENSOR for t in tensors)
    return tensor_bytes + len(json.dumps(state, indent=1, ensure_ascii=False).encode()) + METADATA_BYTES


def make_room(run_dir: Path, needed: int) -> None:
    """Make ``needed`` bytes free by deleting checkpoints other than the newest good one, oldest
    first, when that is enough; an :class:`LmlabError` (deleting nothing) when it is not."""
    root = run_dir / CHECKPOINTS
    free = shutil.disk_usage(root).free
    if free >= needed:
        return
    keep = latest_good_checkpoint(run_dir, warn=lambda message: None)
    expendable = [(old, _directory_bytes(old)) for old in list_checkpoints(run_dir) if old != keep]
    if free + sum(size for _, size in expendable) < needed:
        raise _disk_full_error(root, needed)
    for old, size in expendable:
        shutil.rmtree(old, ignore_errors=True)
        free += size
        if free >= needed:
            return


def _directory_bytes(directory: Path) -> int:
    return sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())


def _is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write failed for want of space (an OSError, or safetensors' own error)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return isinstance(exc, SafetensorError) and ("No space left" in text or "os error 28" in text)


def _disk_full_error(root: Path, needed: int) -> LmlabError:
    free = shutil.disk_usage(root).free
    return LmlabError(
        f"no room for a checkpoint in {root}: it needs about {_megabytes(needed)}, the disk has "
        f"{_megabytes(free)} free; free some space (or lower train.keep_checkpoints) and train "
        "again with --resume"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def discard_checkpoint(run_dir: Path, step: int) -> bool:
    """Delete the checkpoint of ``step`` if the run has one; whether it had."""
    path = Path(run_dir) / CHECKPOINTS / checkpoint_name(step)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete temporary directories a killed process left behind while writing a checkpoint
    (only lmlab's own ``.step-NNNNNNNN.tmp-PID`` / ``.old-PID`` names)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for leftover in root.iterdir():
            if leftover.is_dir() and LEFTOVER_NAME.fullmatch(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run (named ``step-NNNNNNNN``), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name))


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`LmlabError` unless ``path`` is a good checkpoint: a well-formed manifest that
    lists every file, files that match it, a well-formed state, finite weights and optimizer state."""
    manifest = read_json_file(path / MANIFEST, "the checkpoint is damaged", dict)
    _raise_if(path, "manifest.json", _manifest_problem(path, manifest))
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise LmlabError(f"checkpoint {path} is missing {name}")
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            raise LmlabError(f"checkpoint {path} is corrupt: {name} does not match its checksum")
    state = read_json_file(path / STATE, "the checkpoint is damaged", dict)
    _raise_if(path, STATE, _state_problem(path, state, manifest["step"]))
    for name in sorted(manifest["files"]):
        if name in (MODEL_FILE, OPTIMIZER_FILE) or SHARD_FILE.fullmatch(name):
            _raise_if(path, name, _non_finite_problem(path / name))


MANIFEST_KEYS = {"step": int, "files": dict}
MANIFEST_ENTRY_KEYS = {"bytes": int, "sha256": str}
STATE_KEYS = {"step": int, "config": dict, "tokenizer": dict}
TOKENIZER_KEYS = {"kind": str, "data": dict}


def schema_problem(record: Any, required: dict[str, type]) -> str | None:
    """What is wrong with ``record`` (a parsed JSON object) given its ``required`` keys and their
    types, as a phrase; None when every key is present with its type (a bool is no int)."""
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not an object"
    for key, kind in required.items():
        if key not in record:
            return f"lacks {key!r}"
        value = record[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"has {key!r} of type {type(value).__name__}, not {kind.__name__}"
    return None


def _manifest_problem(path: Path, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a parsed manifest: its shape, its entries, or files it does not list."""
    problem = schema_problem(manifest, MANIFEST_KEYS)
    if problem:
        return problem
    files = manifest["files"]
    for name, entry in files.items():
        if Path(name).name != name or name == MANIFEST:
            return f"lists {name!r}, which is no file of a checkpoint"
        problem = schema_problem(entry, MANIFEST_ENTRY_KEYS)
        if problem:
            return f"has an entry for {name} that {problem}"
    weights = set() if is_sharded(path) else {MODEL_FILE}
    needed = weights | {STATE} | {p.name for p in path.iterdir() if p.name != MANIFEST}
    unlisted = sorted(needed - files.keys())
    return f"does not list {', '.join(unlisted)}" if unlisted else None


def _state_problem(path: Path, state: dict[str, Any], step: int) -> str | None:
    """What is wrong with a parsed state.json whose checkpoint's manifest says ``step``."""
    problem = schema_problem(state, STATE_KEYS)
    if problem:
        return problem
    problem = schema_problem(state["tokenizer"], TOKENIZER_KEYS)
    if problem:
        return f"has a 'tokenizer' that {problem}"
    if state["step"] != step:
        return f"is for step {state['step']}, the manifest for step {step}"
    if (path / OPTIMIZER_FILE).is_file() or is_sharded(path):
        groups = state.get("optimizer_param_groups")
        if not isinstance(groups, list) or any(schema_problem(g, {"params": list}) for g in groups):
            return "lacks a list of optimizer parameter groups"
    return None


def _non_finite_problem(file: Path) -> str | None:
    """Why the tensors of a safetensors file are unusable (unreadable, inf or NaN), or None.
    Tensors are read one at a time, so memory stays at the largest one."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if non_finite_tensors({name: handle.get_tensor(name)}):
                    return f"holds inf or NaN in {name}"
    except SafetensorError as exc:
        return f"is not a readable safetensors file ({str(exc).strip().splitlines()[0]})"
    return None


def _raise_if(path: Path, name: str, problem: str | None) -> None:
    if problem:
        raise LmlabError(f"checkpoint {path} is not usable: its {name} {problem}")


def latest_good_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that verifies, or None.

    When a damaged newer checkpoint is passed over for an older good one, each damaged one is
    reported via ``warn``. When none verifies nothing is reported: the caller's error says why
    (see :func:`why_no_good_checkpoint`), so the user sees one line, not a warning and an error.
    """
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except LmlabError as exc:
            damaged.append(exc)
            continue
        for exc in damaged:
            warn(f"warning: {exc}; falling back to the previous checkpoint")
        return path
    return None


def why_no_good_checkpoint(run_dir: Path) -> str:
    """Why :func:`latest_good_checkpoint` found nothing in ``run_dir``, as a phrase for a message."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return "it has no checkpoint"
    try:
        verify_checkpoint(checkpoints[-1])
    except LmlabError as exc:
        return f"all {len(checkpoints)} of its checkpoints are damaged, the newest: {exc}"
    return "its checkpoints changed while being read"


def read_state(path: Path) -> dict[str, Any]:
    """The ``state.json`` of a verified checkpoint."""
    return read_json_file(path / STATE, "the checkpoint is damaged", dict)


def _model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's weights to save: each tensor once, contiguous (decoding may store weights
    transposed), and the names of tied copies → the name saved (the file's metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    saved_as: dict[tuple, str] = {}
    for name, tensor in sorted(model.state_dict().items()):
        key = (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype)
        if tensor.numel() and key in saved_as:
            aliases[name] = saved_as[key]
        else:
            saved_as[key] = name
            tensors[name] = tensor.contiguous()
    return tensors, aliases


def load_weights(path: Path, model: nn.Module) -> None:
    """Load a checkpoint's weights (one process's or sharded) into ``model`` (shapes must match)."""
    try:
        model.load_state_dict(read_weights(path, model), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise LmlabError(f"weights in {path} do not fit the model ({first_line})") from exc


def read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's weights as whole tensors on the CPU, by ``model``'s parameter names (a tied
    weight stored once appears under each of its names)."""
    if is_sharded(path):
        try:
            from lmlab.training.sharded_checkpoint import read_sharded_tensors  # it imports this module

            tensors = read_sharded_tensors(path, prefix=MODEL_TENSORS)
        except Exception as exc:  # DCP reports a shape or name mismatch as a CheckpointException
            raise LmlabError(f"weights in {path} cannot be read ({_first_line(exc)})") from exc
        tensors = {name[len(MODEL_TENSORS):]: tensor for name, tensor in tensors.items()}
        return _with_tied_names(tensors, model)
    with safe_open(str(path / MODEL_FILE), framework="pt") as handle:  # one read for the tensors and the aliases
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        aliases = handle.metadata() or {}
    for name, saved in aliases.items():
        if saved in tensors:
            tensors.setdefault(name, tensors[saved])
    return tensors


def _with_tied_names(tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``tensors`` plus, for each of ``model``'s tied weights stored under one name, its other names."""
    by_storage: dict[tuple, str] = {}
    own = model.state_dict()
    for name, tensor in own.items():
        if name in tensors:
            by_storage.setdefault((tensor.data_ptr(), tensor.shape), name)
    for name, tensor in own.items():
        saved = by_storage.get((tensor.data_ptr(), tensor.shape))
        if name not in tensors and saved is not None and tensor.numel():
            tensors[name] = tensors[saved]
    return tensors


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ----------------------------------------------------------------------------- sharded checkpoints
def is_sharded(path: Path) -> bool:
    """Whether checkpoint directory ``path`` is a sharded one (written by many processes)."""
    return Path(path).is_dir() and any(SHARD_FILE.fullmatch(file.name) for file in Path(path).iterdir())


def load_snapshot(path: Path) -> TrainingSnapshot:
    """Step, state, optimizer state and RNG states of a verified checkpoint."""
    state = read_state(path)
    optimizer_state, rng, cuda_rng = None, None, None
    if (path / OPTIMIZER_FILE).is_file():
        tensors = load_file(str(path / OPTIMIZER_FILE))
        rng = tensors.pop(RNG_KEY, None)
        cuda_rng = tensors.pop(CUDA_RNG_KEY, None)
        optimizer_state = _unflatten_optimizer(tensors, state["optimizer_param_groups"])
    return TrainingSnapshot(step=state["step"], state=state, optimizer_state=optimizer_state, rng_state=rng,
                            cuda_rng_state=cuda_rng)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Optimizer state → (named tensors, JSON-able param groups)."""
    tensors = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.contiguous()
    return tensors, state_dict["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": groups}


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    described = {}
    for file in sorted(directory.iterdir()):
        with open(file, "rb") as f:
            os.fsync(f.fileno())
        described[file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    return described


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and then removed."""
    if final.exists():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


def prune(run_dir: Path, keep: int) -> None:
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
