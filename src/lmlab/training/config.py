"""Run configuration: model, training and data sections, presets, YAML files and ``--set`` overrides.

A run is described by a :class:`RunConfig`. It starts from the defaults, then a preset or a YAML
file, then ``KEY=VALUE`` overrides (``model.n_layer=6``). Every value is checked against its
field's type and, for named variants, its list of valid choices; a mistake is a one-line
:class:`LmlabError` naming the valid keys or values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmlab.errors import LmlabError, read_text_file
from lmlab.models.config import ModelConfig, choice, estimated_parameter_count
from lmlab.training.objective_names import OBJECTIVE_NAMES


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # the values of train.device and --device
PRECISIONS = ("fp32", "fp32-strict", "bf16-mixed", "fp16-mixed", "bf16")
DISTRIBUTED_MODES = ("none", "ddp", "fsdp")  # the values of train.distributed


@dataclass
class TrainConfig:
    """Optimisation, budgets, evaluation and checkpointing."""

    objective: str = choice("causal-lm", OBJECTIVE_NAMES)
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100
    max_steps: int = 5000  # the run's length and the schedule's horizon
    max_time: float | None = None  # seconds; the schedule then also runs on elapsed time
    weight_decay: float = 0.1
    decay_embeddings: bool = True  # weight matrices always decay; norms and biases never
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 1337
    sample_chars: int = 400  # length of the sample printed when training ends (0: none)
    device: str = "auto"  # auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps
    precision: str = choice("fp32", PRECISIONS)  # fp32 (TF32 matmuls on CUDA), fp32-strict, bf16-mixed, fp16-mixed, bf16
    compile: bool | str = "auto"  # torch.compile the model: auto (on for CUDA), true or false
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    distributed: str = choice("none", DISTRIBUTED_MODES)  # under torchrun: none, ddp or fsdp (FSDP2)

    def validate(self) -> None:
        """Raise :class:`LmlabError` for settings a run cannot use."""
        for f in dataclasses.fields(self):
            _check_finite(getattr(self, f.name), f"train.{f.name}")
        for name in ("batch_size", "max_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
                     "grad_accum", "eval_batches"):
            if getattr(self, name) < 1:
                raise LmlabError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise LmlabError(f"train.lr must be positive and train.min_lr in [0, lr]; got {self.lr} and {self.min_lr}")
        if self.max_time is not None and not self.max_time > 0:
            raise LmlabError(f"train.max_time must be positive seconds (or null), got {self.max_time}")
        if not 0 <= self.seed < 2**32:
            raise LmlabError(f"train.seed must be in [0, 2^32), got {self.seed}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0 or self.sample_chars < 0:
            raise LmlabError("train.warmup_steps, grad_clip, weight_decay and sample_chars must be ≥ 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise LmlabError(f"train.beta1 and train.beta2 must be in [0, 1); got {self.beta1} and {self.beta2}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise LmlabError(f"train.device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise LmlabError(f"train.distributed must be none, ddp or fsdp; got {self.distributed!r}")
        if self.compile not in ("auto", True, False):
            raise LmlabError(f"train.compile must be auto, true or false; got {self.compile!r}")


@dataclass
class DataConfig:
    """Where the text comes from and how it is split."""

    corpus: str = "shakespeare"  # a corpus name, file, directory or glob, or a shard directory
    tokenizer: str = "char"  # char (built from the corpus), chess-pgn, or a tokenizer directory
    val_fraction: float = 0.1
    unk: bool = False  # map unseen characters to an unknown token instead of failing


@dataclass
class RunConfig:
    """Everything a training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        config = cls()
        apply_mapping(config, data)
        return config


PRESET_PACKAGE = "lmlab.training.presets"


# Objectives a GRU baseline trains: its forward takes token ids only (no masks, no prefix lengths).
GRU_OBJECTIVES = ("causal-lm",)
# float32 weight and gradient plus AdamW's two moments
TRAINING_BYTES_PER_PARAMETER = 16


def check_objective_fits_arch(config: RunConfig) -> None:
    """Raise :class:`LmlabError` when ``config.model.arch`` cannot be called the way the
    objective calls its model (checked with the config, before any data or model exists)."""
    objective, arch = config.train.objective, config.model.arch
    if arch == "gru" and objective not in GRU_OBJECTIVES:
        raise LmlabError(
            f"objective {objective} trains transformer models; a model.arch=gru model trains only with "
            f"{', '.join(GRU_OBJECTIVES)} (use --set model.arch=transformer for {objective})"
        )


def estimated_training_bytes(config: RunConfig) -> int:
    """A lower bound on the memory training ``config`` takes: weights, gradients and optimizer
    state of every parameter, and one float32 residual stream per layer of a batch (kept for the
    backward pass). ``config.model.vocab_size`` must be set."""
    model = config.model
    parameters = estimated_parameter_count(model)
    activations = 4 * config.train.batch_size * model.context_length * model.d_model * model.n_layer
    return TRAINING_BYTES_PER_PARAMETER * parameters + activations


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get now (psutil's ``available``, else the machine's physical
    memory), or None when the platform tells neither."""
    try:
        import psutil
    except ImportError:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    return int(psutil.virtual_memory().available)


def check_fits_in_memory(config: RunConfig, available: int | None = None) -> None:
    """Raise :class:`LmlabError` before building a model whose training cannot fit in memory
    (``available`` bytes, default :func:`available_memory_bytes`)."""
    available = available_memory_bytes() if available is None else available
    needed = estimated_training_bytes(config)
    if available is not None and needed > available:
        raise LmlabError(
            f"training this model needs at least {needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB of "
            "memory is available; lower model.context_length, d_model, n_layer or train.batch_size"
        )


def preset_names() -> list[str]:
    """Names of the presets shipped with lmlab."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return sorted(f.name[: -len(".yaml")] for f in files if f.name.endswith(".yaml"))


def load_preset(name: str) -> RunConfig:
    """The preset ``name`` applied on top of the defaults."""
    if name not in preset_names():
        raise LmlabError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}")
    text = resources.files(PRESET_PACKAGE).joinpath(f"{name}.yaml").read_text()
    return RunConfig.from_dict(yaml.safe_load(text) or {})


def load_config_file(path: str | Path) -> RunConfig:
    """A YAML file with ``model:``, ``train:`` and ``data:`` sections applied on the defaults."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(read_text_file(path, "save it as UTF-8 YAML"))
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0]
        raise LmlabError(f"config file {path} is not valid YAML ({reason})") from exc
    if data is not None and not isinstance(data, dict):
        raise LmlabError(f"config file {path} must hold a mapping with model/train/data sections")
    return RunConfig.from_dict(data or {})


def apply_mapping(config: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Set nested dataclass fields from a nested mapping, checking each key and value."""
    if not isinstance(data, dict):
        raise LmlabError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    for key, value in data.items():
        target_field = _field_of(config, key, prefix)
        if dataclasses.is_dataclass(getattr(config, key)):
            apply_mapping(getattr(config, key), value, f"{prefix}{key}.")
        else:
            setattr(config, key, _coerce(value, config, target_field, f"{prefix}{key}"))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) in order."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LmlabError(f"override {item!r} must look like KEY=VALUE, e.g. model.n_layer=6")
        nested: dict[str, Any] = {}
        cursor = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = _parse_scalar(raw)
        apply_mapping(config, nested)
    return config


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _fields(config: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config)}


def _field_of(config: Any, key: str, prefix: str) -> dataclasses.Field:
    fields = _fields(config)
    if key not in fields:
        raise LmlabError(
            f"unknown config key {prefix}{key!s}; valid keys here: "
            + ", ".join(prefix + name for name in fields)
        )
    return fields[key]


def _coerce(value: Any, config: Any, f: dataclasses.Field, name: str) -> Any:
    """Check ``value`` against the field's type and choices; returns the value to store."""
    hints = typing.get_type_hints(type(config))
    allowed = _allowed_types(hints[f.name])
    if value is None:
        if type(None) in allowed:
            return None
        raise LmlabError(f"{name} cannot be empty; give a value of type {_type_names(allowed)}")
    converted = _convert(value, allowed)
    if converted is None:
        raise LmlabError(f"{name} must be {_type_names(allowed)}, got {value!r}")
    _check_finite(converted, name)
    choices = f.metadata.get("choices")
    if choices and converted not in choices:
        raise LmlabError(f"{name} must be one of {', '.join(choices)}; got {converted!r}")
    return converted


def _check_finite(value: Any, name: str) -> None:
    """A float setting must be a finite number: inf or NaN is an :class:`LmlabError`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise LmlabError(f"{name} must be a finite number, got {value}")


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _convert(value: Any, allowed: tuple[type, ...]) -> Any:
    """``value`` as one of the allowed scalar types, or None if it fits none of them."""
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-4" as a string
            except ValueError:
                pass
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    return None


def _type_names(allowed: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names.get(kind, kind.__name__) for kind in allowed if kind is not type(None))
