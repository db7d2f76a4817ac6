"""Checkpoints that are never half-written and that resume training exactly.

A checkpoint is a directory ``RUN_DIR/checkpoints/step-00000100/`` holding

- ``model.safetensors``: the weights (a tied weight stored once);
- ``optimizer.safetensors``: the optimizer's tensors and the RNG state;
- ``state.json``: step, config, tokenizer, optimizer hyper-parameters, trainer counters;
- ``manifest.json``: size and sha256 of each file above, written last.

It is written to a temporary directory and renamed into place, so a crash leaves either the
whole checkpoint or none. Loading verifies the manifest; a corrupt or truncated checkpoint is
reported and the newest good one is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lmlab.errors import LmlabError

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_KEY = "rng.torch_cpu"


@dataclass
class TrainingSnapshot:
    """What a checkpoint restores besides the weights."""

    step: int
    state: dict[str, Any]  # the parsed state.json
    optimizer_state: dict[str, Any] | None  # ready for optimizer.load_state_dict
    rng_state: torch.Tensor | None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write the checkpoint for ``step`` atomically, then keep only the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, aliases = _model_tensors(model)
    save_file(tensors, str(tmp / MODEL_FILE), metadata=aliases)
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        tensors[RNG_KEY] = torch.get_rng_state()
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        state = {**state, "optimizer_param_groups": groups}
    _write_json(tmp / STATE, {**state, "step": step})
    _write_json(tmp / MANIFEST, {"step": step, "files": _describe_files(tmp)})
    _fsync_dir(tmp)
    _replace_dir(tmp, final)
    _prune(root, keep)
    return final


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete temporary directories a killed process left behind while writing a checkpoint."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for leftover in root.glob(".step-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`LmlabError` unless every file matches the manifest."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LmlabError(f"checkpoint {path} has no readable manifest ({exc.__class__.__name__})") from exc
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise LmlabError(f"checkpoint {path} is missing {name}")
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            raise LmlabError(f"checkpoint {path} is corrupt: {name} does not match its checksum")


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
    return json.loads((path / STATE).read_text())


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
    """Load a checkpoint's weights into ``model`` (shapes must match)."""
    file = str(path / MODEL_FILE)
    try:
        with safe_open(file, framework="pt") as handle:  # one read for the tensors and the aliases
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            aliases = handle.metadata() or {}
        for name, saved in aliases.items():
            if saved in tensors:
                tensors.setdefault(name, tensors[saved])
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, SafetensorError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise LmlabError(f"weights in {path} do not fit the model ({first_line})") from exc


def load_snapshot(path: Path) -> TrainingSnapshot:
    """Step, state, optimizer state and RNG state of a verified checkpoint."""
    state = read_state(path)
    optimizer_state, rng = None, None
    if (path / OPTIMIZER_FILE).is_file():
        tensors = load_file(str(path / OPTIMIZER_FILE))
        rng = tensors.pop(RNG_KEY, None)
        optimizer_state = _unflatten_optimizer(tensors, state["optimizer_param_groups"])
    return TrainingSnapshot(step=state["step"], state=state, optimizer_state=optimizer_state, rng_state=rng)


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
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


def _describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    described = {}
    for file in sorted(directory.iterdir()):
        with open(file, "rb") as f:
            os.fsync(f.fileno())
        described[file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
    return described


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and then removed."""
    if final.exists():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def _prune(root: Path, keep: int) -> None:
    checkpoints = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
