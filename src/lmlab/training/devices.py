"""Where and in what number format a run trains: the device, mixed precision, torch.compile and
activation checkpointing.

:func:`placement_for` turns ``train.device``, ``train.precision`` and ``train.compile`` into a
:class:`Placement`; the trainer moves the model there, runs each forward pass in
:meth:`Placement.autocast` (a training step's forward and backward also in
:meth:`Placement.kernels`) and moves each CPU-built batch with :func:`to_device`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmlab.errors import LmlabError
from lmlab.kernels.onednn_linear import onednn_linear_mode
from lmlab.models.blocks import TransformerStack
from lmlab.training.config import DEVICE_PATTERN

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


@dataclasses.dataclass(frozen=True)
class Placement:
    """A resolved device and precision: what the trainer needs to place and run the model."""

    device: torch.device
    precision: str  # one of lmlab.training.config.PRECISIONS
    compile: bool

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the parameters (bfloat16 only for ``bf16``)."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matrix products run in (what the peak FLOP/s of the device is taken for)."""
        return AUTOCAST_DTYPES.get(self.precision, self.weight_dtype)

    @property
    def uses_scaler(self) -> bool:
        return self.precision == "fp16-mixed"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context forward passes run in: autocast for the ``*-mixed`` precisions."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def kernels(self) -> contextlib.AbstractContextManager:
        """The context a training step (forward and backward) runs in: on the CPU in float32 and
        eager, every linear layer's products through oneDNN where that is faster
        (:mod:`lmlab.kernels.onednn_linear`); nothing elsewhere."""
        float32_cpu = self.device.type == "cpu" and self.precision in ("fp32", "fp32-strict")
        return onednn_linear_mode(enabled=float32_cpu and not self.compile)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device
    that exists here; an unavailable one is a one-line :class:`LmlabError`."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise LmlabError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        _require_cuda(device)
    if device.type == "mps" and not _mps_available():
        raise LmlabError("device mps is not available here (it needs Apple silicon and a PyTorch built with MPS); "
                         "use --device cpu or auto")
    return device


def _require_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise LmlabError(f"device {device} is not available: {why}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise LmlabError(f"device {device} is not available: this machine has {count} CUDA device(s), "
                         f"cuda:0 to cuda:{count - 1}")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def placement_for(device: str, precision: str, compile_setting: str | bool) -> Placement:
    """The :class:`Placement` of a run's settings, checked against this machine; also sets the
    process-wide CUDA matmul precision (TF32 unless ``fp32-strict``) and current device."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index is not None:
            torch.cuda.set_device(resolved)
        allow_tf32 = precision != "fp32-strict"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
    compiled = resolved.type == "cuda" if compile_setting == "auto" else bool(compile_setting)
    return Placement(resolved, precision, compiled)


def to_device(batch: Any, device: torch.device) -> Any:
    """A CPU-built batch (an object with ``to(device)``, or a tensor) on ``device``: pinned and
    copied without blocking on CUDA, unchanged on the CPU."""
    if device.type == "cpu":
        return batch
    if device.type == "cuda":
        return _map_tensors(batch, lambda t: t.pin_memory().to(device, non_blocking=True))
    return _map_tensors(batch, lambda t: t.to(device))


def _map_tensors(batch: Any, move: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``move`` applied to each tensor: a tensor, a dataclass of tensors (None fields
    kept), or a tuple / list / dict of them."""
    if torch.is_tensor(batch):
        return move(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map_tensors(item, move) for item in batch)
    if isinstance(batch, dict):
        return {key: _map_tensors(value, move) for key, value in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved = {f.name: _map_tensors(getattr(batch, f.name), move) for f in dataclasses.fields(batch)
                 if getattr(batch, f.name) is not None}
        return dataclasses.replace(batch, **moved)
    return batch


@contextlib.contextmanager
def inputs_on_model_device(model: nn.Module) -> Iterator[None]:
    """While open, calls of ``model`` take CPU inputs and give CPU outputs, the model computing on
    its own device: for evaluation code that builds batches (and compares labels) on the CPU.
    Nothing changes for a model on the CPU."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        yield
        return
    before = model.register_forward_pre_hook(
        lambda module, args, kwargs: (to_device(args, device), to_device(kwargs, device)), with_kwargs=True)
    after = model.register_forward_hook(lambda module, args, output: _map_tensors(output, lambda t: t.cpu()))
    try:
        yield
    finally:
        before.remove()
        after.remove()


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each Transformer block's activations in the backward pass instead of keeping
    them (``torch.utils.checkpoint``, non-reentrant; dropout masks are replayed, so the loss and
    gradients are those of the plain model). Parameter names do not change. Returns the number
    of blocks wrapped (0 for a model without Transformer blocks, such as the GRU)."""
    wrapped = 0
    for stack in model.modules():
        if isinstance(stack, TransformerStack):
            for block in stack.blocks:
                block.forward = _checkpointed(block.forward)
                wrapped += 1
    return wrapped


def _checkpointed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():  # evaluation and decoding: nothing to recompute
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a wall clock or a value)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
