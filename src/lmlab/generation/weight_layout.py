"""Weight layout for fast decoding on the CPU.

A decoding step multiplies one row (or a few) by every weight matrix, so its speed is how fast
the weights stream from memory. Where the native kernel (:mod:`lmlab.kernels`) is available it
does those products on ``nn.Linear``'s own (out, in) layout, and nothing changes. Without it,
MKL does them, and MKL streams an (in, out) matrix faster (the README's Benchmarks say by how
much): :func:`prepare_for_decoding` then stores each float32 CPU weight that way —
the same values, the parameter becomes the transposed view of an (in, out) tensor — so
``F.linear`` hands MKL the better layout with no change to any ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from lmlab.kernels import load_native


def is_input_major(weight: torch.Tensor) -> bool:
    """True when an (out, in) weight is stored as the transpose of a contiguous (in, out) tensor."""
    return weight.dim() == 2 and weight.t().is_contiguous()


def prepare_for_decoding(model: nn.Module) -> nn.Module:
    """Without the native kernel: store every float32 CPU ``nn.Linear`` (and tied embedding) weight
    of ``model`` input-major, in place; values, parameters and state-dict names stay the same.
    With it, and for other dtypes and devices (bfloat16 kernels and GPUs prefer the usual
    layout), nothing changes. Returns ``model``."""
    if load_native() is not None:
        return model
    return store_input_major(model)


def store_input_major(model: nn.Module) -> nn.Module:
    """Store every float32 CPU ``nn.Linear`` weight of ``model`` input-major, in place."""
    done: set[int] = set()
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if id(weight) in done or weight.device.type != "cpu" or weight.dtype != torch.float32:
            continue
        done.add(id(weight))
        if not is_input_major(weight):
            with torch.no_grad():
                weight.data = weight.data.t().contiguous().t()  # (out, in) view of (in, out) storage
    return model
