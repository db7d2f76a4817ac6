"""Small helpers the per-family loaders share: regex name rules, fused-QKV slices, the tensors of
a model to fill (tied parameters once), the activation names of Hugging Face configs, and the
check that a config has a family's equivalent before export."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.interop.weights import Assignments, Target

# Hugging Face activation names → lmlab feed-forward kinds (plain, non-gated).
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu-tanh",
    "gelu_pytorch_tanh": "gelu-tanh",
    "gelu_fast": "gelu-tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
LMLAB_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def activation(name: str | None, where: str) -> str:
    """The lmlab feed-forward kind of a Hugging Face activation name."""
    if name not in HF_ACTIVATIONS:
        raise LmlabError(
            f"{where}: activation {name!r} is not supported; lmlab knows {', '.join(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


Rule = tuple[str, Callable[[re.Match[str]], Assignments | None]]


@dataclass
class RuleMap:
    """A name map from regex rules: the first rule whose pattern fully matches the (prefix-stripped)
    source name gives its assignments. ``prefixes`` are stripped first (e.g. ``"transformer."``)."""

    rules: Sequence[Rule]
    prefixes: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._compiled = [(re.compile(pattern), build) for pattern, build in self.rules]

    def __call__(self, name: str) -> Assignments | None:
        bare = strip_prefix(name, self.prefixes)
        for pattern, build in self._compiled:
            match = pattern.fullmatch(bare)
            if match:
                return build(match)
        return None


def strip_prefix(name: str, prefixes: Sequence[str]) -> str:
    """``name`` without the first of ``prefixes`` it starts with."""
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def to(name: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[re.Match[str]], Target]:
    """A rule target: ``name`` formatted with the match's groups (``{0}`` = first group)."""
    return lambda m: Target(name.format(*m.groups()), transform)


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """Conv1D (in, out) → Linear (out, in)."""
    return tensor.t()


def qkv_slices(q_size: int, kv_size: int) -> dict[str, slice]:
    """Row ranges of q, k and v in a fused ``qkv`` weight."""
    return {"q": slice(0, q_size), "k": slice(q_size, q_size + kv_size), "v": slice(q_size + kv_size, q_size + 2 * kv_size)}


def fill_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent tensors, each shared (tied) tensor once under its first name."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        tensors[name] = tensor
    return tensors


def require_equal(values: Mapping[str, object], where: str, what: str) -> object:
    """The one value all of ``values`` share; else an error naming them."""
    distinct = set(values.values())
    if len(distinct) != 1:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise LmlabError(f"{where}: lmlab needs {what} ({shown}); this checkpoint cannot be loaded")
    return distinct.pop()


def config_mismatches(config, wanted: Mapping[str, object]) -> list[str]:
    """``field=value`` for every field of ``config`` (a ModelConfig) that differs from a family's
    fixed setting in ``wanted``."""
    return [f"{k}={getattr(config, k)!r}" for k, v in wanted.items() if getattr(config, k) != v]


def bias_or_zeros(state: Mapping[str, torch.Tensor], layer: str) -> torch.Tensor:
    """The bias of ``layer`` (a Linear or a norm, by its state-dict prefix), or zeros of its
    output size when the layer has none: a bias-free lmlab model written to a format whose layers
    all have biases, exactly."""
    bias = state.get(f"{layer}.bias")
    return bias if bias is not None else state[f"{layer}.weight"].new_zeros(state[f"{layer}.weight"].shape[0])


def require_exportable(config, family: str, mismatches: list[str]) -> None:
    """Raise, listing ``mismatches`` (and an MoE, which no exported family has), unless there are
    none: the config has a ``family`` equivalent."""
    if config.moe.num_experts:
        mismatches = [*mismatches, "moe"]
    if mismatches:
        raise LmlabError(f"this model has no {family} equivalent ({', '.join(mismatches)})")
