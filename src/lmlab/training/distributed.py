"""Training in many processes, started by ``torchrun``, on PyTorch's own ``torch.distributed``.

``train.distributed`` says how the processes share the work: ``ddp`` (DistributedDataParallel:
every process holds the whole model, gradients are averaged) or ``fsdp`` (FSDP2's
``fully_shard`` per Transformer block and at the root: parameters, gradients and optimizer state
are sharded, with a bfloat16 mixed-precision policy under ``bf16-mixed``). The backend is gloo on
the CPU and NCCL on CUDA (each process on ``cuda:LOCAL_RANK``).

Every process draws the step's *global* batch from the (seed, step) generator, exactly as one
process would, and trains on its rows of it (:func:`local_rows`); each loss is weighted by its
share of the batch's labelled tokens (:func:`loss_weight`), so the averaged gradients are those of
the global batch and N processes follow the loss curve of one.

Checkpoints are sharded (:func:`save_sharded`): every process writes its part of the weights and
optimizer state through ``torch.distributed.checkpoint`` (safetensors files whose sharding is
recorded as JSON in their headers, so loading one unpickles nothing) into a temporary directory,
and after a barrier process 0 adds ``state.json`` and the manifest and renames it into place.
Layouts convert on load (:func:`restore_training_state`), so a run resumes on another number of
processes, or from DDP to FSDP and back, and a one-process checkpoint resumes on many.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.blocks import TransformerStack
from lmlab.objectives.base import IGNORE_INDEX, LMBatch
from lmlab.training import checkpoint as ckpt
from lmlab.training import sharded_checkpoint as sharded
from lmlab.training.config import TrainConfig
from lmlab.training.devices import Placement

# How long a collective waits for the other processes before it fails: long enough for a slow
# first (compiling) step or a large checkpoint, short enough that a lost process ends the run.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MODEL_PREFIX, OPTIMIZER_PREFIX, RNG_TENSOR = "model/", "optim/", "rng/torch_cpu"


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``mode`` (none, ddp or fsdp), its rank and the world size."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process prints, logs and publishes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "none"


def launched_processes(mode: str) -> Processes:
    """The :class:`Processes` of this process for ``train.distributed=mode``, from torchrun's
    environment; a one-line :class:`LmlabError` when mode and launch do not fit together."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none":
        if world_size > 1:
            raise LmlabError(
                f"torchrun started {world_size} processes but train.distributed is none; "
                "add --set train.distributed=ddp (or fsdp)"
            )
        return Processes()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise LmlabError(
            f"train.distributed={mode} runs in processes started by torchrun ({missing[0]} is not set); "
            f"use 'lmlab train --nproc N ...' or 'torchrun --nproc_per_node N -m lmlab train ...' "
            "(or --set train.distributed=none for one process)"
        )
    return Processes(mode, int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))


def process_device(processes: Processes, device: str) -> str:
    """The ``train.device`` of this process: under torchrun, CUDA means ``cuda:LOCAL_RANK``."""
    cuda_wanted = device in ("cuda", "auto") and torch.cuda.is_available()
    return f"cuda:{processes.local_rank}" if processes.distributed and cuda_wanted else device


def check_batch_split(processes: Processes, cfg: TrainConfig) -> None:
    """Raise :class:`LmlabError` unless the global batch splits evenly across the processes."""
    if cfg.batch_size % processes.world_size:
        raise LmlabError(
            f"train.batch_size={cfg.batch_size} does not split across {processes.world_size} processes; "
            f"use a multiple of {processes.world_size}"
        )


def join(processes: Processes, device: torch.device) -> None:
    """Join the run's process group (gloo on the CPU, NCCL on CUDA); nothing for one process.
    From then on, torchrun's SIGTERM (sent when another process died) ends this one with an error."""
    if not processes.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None)
    signal.signal(signal.SIGTERM, _stopped_by_launcher)


def leave() -> None:
    """Leave the process group after a run that ended well."""
    if dist.is_initialized():
        dist.destroy_process_group()


class StoppedByLauncher(LmlabError):
    """torchrun ended this process (it does so when another process of the run ended)."""


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    raise StoppedByLauncher(f"{where()}torchrun stopped this process because another process of the run ended")


def where() -> str:
    """"process R of N: " in a distributed run, for a message; "" otherwise."""
    if not dist.is_initialized():
        return ""
    return f"process {dist.get_rank()} of {dist.get_world_size()}: "


def lost_contact(exc: BaseException, last_checkpoint: Path | None) -> LmlabError:
    """The one-line error of a process that lost the others (one died, hung, or torchrun stopped
    the run): why, and the checkpoint ``--resume`` continues from."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].removeprefix(where())
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0]  # gloo's "[file:line] what. Advice."
    kept = f"the last checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    return LmlabError(f"{where()}lost the other processes of the run ({reason}); {kept}; "
                      "continue it with --resume")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed collective (a lost peer, a timeout, a broken connection) or
    torchrun's stop after another process ended."""
    if isinstance(exc, (dist.DistError, StoppedByLauncher)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and dist.is_initialized() and any(
        word in text for word in ("Connection", "gloo", "NCCL", "timed out", "Timeout", "closed"))


# ------------------------------------------------------------------------------- agreement
@contextlib.contextmanager
def together(processes: Processes) -> Iterator[None]:
    """Run a block without collectives on every process; if it raises on one, it raises on all
    (the others say so), so no process waits forever for one that gave up."""
    try:
        yield
    except BaseException:
        _all_agree(processes, ok=False)
        raise
    if not _all_agree(processes, ok=True):
        raise LmlabError(f"{where()}stopped because another process of the run failed (its error is above)")


def _all_agree(processes: Processes, ok: bool) -> bool:
    if not processes.distributed:
        return ok
    flag = torch.tensor([1 if ok else 0], device=_collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The mean of a scalar over the processes (gloo has no AVG, so a sum over the world size)."""
    if not processes.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / processes.world_size


def max_over_processes(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The largest value of a scalar over the processes."""
    if not processes.distributed:
        return value
    largest = value.detach().clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest


def barrier(processes: Processes) -> None:
    if processes.distributed:
        dist.barrier()


# ------------------------------------------------------------------------------- the model
def wrap(model: nn.Module, processes: Processes, placement: Placement) -> nn.Module:
    """``model`` (already on this process's device) as DDP or FSDP2 wants it; unchanged for one process."""
    if processes.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [placement.device] if placement.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if processes.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(placement.device.type, (processes.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if placement.precision == "bf16-mixed" else MixedPrecisionPolicy()
        for stack in model.modules():
            if isinstance(stack, TransformerStack):
                for block in stack.blocks:
                    fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (an FSDP2 model is its own module)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def gradient_sync(model: nn.Module, processes: Processes, enabled: bool) -> contextlib.AbstractContextManager:
    """The context a micro-batch's backward pass runs in: without the gradient all-reduce /
    reduce-scatter unless ``enabled`` (the last micro-batch of a step)."""
    if processes.mode == "ddp" and not enabled:
        return model.no_sync()
    if processes.mode == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def local_rows(batch: LMBatch, processes: Processes) -> LMBatch:
    """This process's rows of the global ``batch``: the R-th of N equal slices."""
    if processes.world_size == 1:
        return batch
    rows = batch.input_ids.size(0) // processes.world_size
    start = processes.rank * rows
    sliced = {f.name: getattr(batch, f.name)[start:start + rows]
              for f in fields(batch) if getattr(batch, f.name) is not None}
    return replace(batch, **sliced)


def loss_weight(global_batch: LMBatch, local_batch: LMBatch, processes: Processes) -> float:
    """What this process's mean loss is multiplied by so that the mean over processes of the
    weighted losses (and of their gradients) is the mean loss over the global batch's labelled
    tokens: its share of those tokens times the world size."""
    if processes.world_size == 1:
        return 1.0
    labelled = int((global_batch.labels != IGNORE_INDEX).sum())
    local = int((local_batch.labels != IGNORE_INDEX).sum())
    return local * processes.world_size / max(1, labelled)


def labelled(batch: LMBatch) -> LMBatch:
    """``batch``, or, when none of its positions has a label, the batch with its first position
    labelled (token 0): its loss is then weighted by 0, and a mean over no tokens would be NaN, and
    its gradient too. The process still runs the forward and backward pass the others wait for."""
    if bool((batch.labels != IGNORE_INDEX).any()):
        return batch
    labels = batch.labels.clone()
    labels.view(-1)[0] = 0
    return replace(batch, labels=labels)


# ------------------------------------------------------------------------------- checkpoints
def training_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Weights and optimizer state as one flat mapping (``model/NAME``, ``optim/NAME/KEY``, and
    the CPU RNG state): each process's shards under FSDP, whole tensors otherwise; and the
    optimizer's parameter groups (parameters by name). A tied weight is stored once, under its
    first name (safetensors keeps no two names for one tensor)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict  # imported when used: it takes seconds

    model_state, optimizer_state = get_state_dict(model, optimizer)
    tied = _tied_names(model)
    tensors = {MODEL_PREFIX + name: tensor for name, tensor in model_state.items() if name not in tied}
    for name, per_param in optimizer_state["state"].items():
        for key, value in per_param.items():
            tensors[f"{OPTIMIZER_PREFIX}{name}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors[RNG_TENSOR] = torch.get_rng_state()
    return tensors, optimizer_state["param_groups"]


def save_sharded(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                 state: dict[str, Any], keep: int, processes: Processes) -> Path:
    """Write the checkpoint of ``step``, every process its part, and publish it from process 0
    once all have written (see :func:`lmlab.training.sharded_checkpoint.publish_sharded`).

    Raises :class:`~lmlab.training.checkpoint.NonFiniteState` on every process, writing nothing,
    when any process's part holds inf or NaN."""
    tensors, groups = training_tensors(model, optimizer)
    bad = torch.tensor([1 if ckpt.non_finite_tensors(_local(tensors)) else 0])
    if int(max_over_processes(bad.to(_tensor_device(processes)), processes)):
        raise ckpt.NonFiniteState("the weights or optimizer state hold inf or NaN")
    tmp = sharded.sharded_temporary(run_dir, step, _main_pid(processes))
    if processes.is_main:
        sharded.prepare_sharded(run_dir, tmp, _local(tensors), processes.world_size)
    barrier(processes)
    sharded.write_sharded_tensors(tmp, tensors)
    barrier(processes)  # every process's shard is on disk
    if processes.is_main:
        state = {**state, "optimizer_param_groups": groups,
                 "distributed": {"mode": processes.mode, "world_size": processes.world_size}}
        sharded.publish_sharded(run_dir, step, tmp, state, keep)
    barrier(processes)  # no process goes on before the checkpoint is in place
    return Path(run_dir) / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)


def _local(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor's part on this process (a DTensor's local shard)."""
    return {name: tensor.to_local() if hasattr(tensor, "to_local") else tensor for name, tensor in tensors.items()}


def _tensor_device(processes: Processes) -> torch.device:
    return _collective_device() if processes.distributed else torch.device("cpu")


def _main_pid(processes: Processes) -> int:
    """Process 0's pid, on every process: it names the temporary checkpoint directory."""
    pid = torch.tensor([os.getpid()], dtype=torch.long, device=_tensor_device(processes))
    if processes.distributed:
        dist.broadcast(pid, src=0)
    return int(pid.item())


def restore_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load checkpoint ``path`` — sharded, by any number of processes, or one process's — into
    ``model`` and ``optimizer`` however they are laid out now (plain, DDP or FSDP2), and set
    the CPU RNG state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = ckpt.read_state(path)
    if ckpt.is_sharded(path):
        targets, _ = training_tensors(model, optimizer)  # this process's layout, filled in place
        sharded.read_sharded_tensors(path, targets)
        full = False
    else:
        targets = _one_process_tensors(path, model, optimizer)
        full = True
    model_state = {name[len(MODEL_PREFIX):]: t for name, t in targets.items() if name.startswith(MODEL_PREFIX)}
    for alias, name in _tied_names(model).items():
        model_state[alias] = model_state[name]
    optimizer_state: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in targets.items():
        if name.startswith(OPTIMIZER_PREFIX):
            param, key = name[len(OPTIMIZER_PREFIX):].rsplit("/", 1)
            optimizer_state.setdefault(param, {})[key] = tensor
    groups = _groups_by_name(state["optimizer_param_groups"], optimizer, model)
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={"state": optimizer_state, "param_groups": groups},
                   options=StateDictOptions(full_state_dict=full))
    torch.set_rng_state(targets[RNG_TENSOR])


def _tied_names(model: nn.Module) -> dict[str, str]:
    """The second and later names of each tied parameter → its first name."""
    first: dict[int, str] = {}
    tied = {}
    for name, param in unwrapped(model).named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def _one_process_tensors(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A one-process checkpoint's whole tensors under the names of :func:`training_tensors`
    (its optimizer state is stored by parameter index)."""
    snapshot = ckpt.load_snapshot(path)
    tensors = {MODEL_PREFIX + name: t for name, t in ckpt.read_weights(path, unwrapped(model)).items()}
    names = _parameter_names(optimizer, model)
    for index, per_param in snapshot.optimizer_state["state"].items():
        for key, value in per_param.items():
            tensors[f"{OPTIMIZER_PREFIX}{names[int(index)]}/{key}"] = value
    tensors[RNG_TENSOR] = snapshot.rng_state
    return tensors


def _parameter_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The name of each of the optimizer's parameters, in the order its state_dict numbers them."""
    name_of = {id(param): name for name, param in unwrapped(model).named_parameters()}
    return [name_of[id(param)] for group in optimizer.param_groups for param in group["params"]]


def _groups_by_name(groups: list[dict], optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict]:
    """Stored parameter groups with parameters named (a one-process checkpoint numbers them)."""
    names = _parameter_names(optimizer, model)
    return [{**group, "params": [names[p] if isinstance(p, int) else p for p in group["params"]]} for group in groups]
