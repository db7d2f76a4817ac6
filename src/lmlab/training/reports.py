"""What a training run reports about its speed: tokens/s, model FLOPs per token, MFU and peak memory.

Model FLOPs per token follow the PaLM paper's appendix B count::

    flops_per_token = 6 * N + 12 * L * T * d_attn

``N`` is the number of parameters that multiply activations (every parameter except embedding
tables that are only looked up; a token embedding tied to the LM head counts, once), ``L`` the
number of attention layers, ``T`` the context length and ``d_attn = n_head * head_size``. The
first term is the forward (2 FLOPs per weight) and backward (4) matmuls; the second the attention
scores and weighted values over the full T×T square (no discount for causal masking). MFU is
tokens/s × FLOPs per token over the device's peak FLOP/s for the precision the matmuls run in.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from typing import NamedTuple

import torch
from torch import nn

from lmlab.models.blocks import TransformerStack


class PeakFlops(NamedTuple):
    """Dense peak FLOP/s of a GPU (no sparsity): bf16/fp16 tensor cores, TF32, plain fp32."""

    bf16: float
    tf32: float
    fp32: float


# Vendor datasheet figures, dense. Matched against torch.cuda.get_device_name() by substring, first
# match wins (so "H100 PCIe" comes before "H100").
GPU_PEAKS: tuple[tuple[str, PeakFlops], ...] = (
    ("H200", PeakFlops(989e12, 494e12, 67e12)),
    ("H100 PCIe", PeakFlops(756e12, 378e12, 51e12)),
    ("H100", PeakFlops(989e12, 494e12, 67e12)),
    ("A100", PeakFlops(312e12, 156e12, 19.5e12)),
    ("L40S", PeakFlops(362e12, 183e12, 91.6e12)),
    ("L4", PeakFlops(121e12, 60e12, 30.3e12)),
    ("A10", PeakFlops(125e12, 62.5e12, 31.2e12)),
    ("RTX 4090", PeakFlops(165e12, 82.6e12, 82.6e12)),
    ("RTX 3090", PeakFlops(71e12, 35.6e12, 35.6e12)),
    ("V100", PeakFlops(125e12, 15.7e12, 15.7e12)),  # no bf16: the fp16 tensor-core figure
    ("T4", PeakFlops(65e12, 8.1e12, 8.1e12)),  # likewise
)
CPU_MATMUL_SIZE = 512  # square matmul timed for the CPU's measured peak
CPU_MATMUL_REPEATS = 8


def matmul_parameters(model: nn.Module) -> int:
    """``N`` of the FLOPs formula: parameters other than look-up-only embedding tables."""
    lookup_only = {id(p) for m in model.modules()
                   if isinstance(m, nn.Embedding) or type(m).__name__.endswith("Embedding")
                   for p in m.parameters(recurse=False)}
    multiplied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    return sum(p.numel() for p in model.parameters() if id(p) not in lookup_only or id(p) in multiplied)


def attention_layers(model: nn.Module) -> tuple[int, int]:
    """(number of attention blocks, their d_attn = n_head × head_size) over every Transformer stack."""
    layers, width = 0, 0
    for stack in model.modules():
        if isinstance(stack, TransformerStack):
            layers += len(stack.blocks)
            width = stack.config.n_head * stack.config.head_dim
    return layers, width


def flops_per_token(model: nn.Module, context_length: int) -> int:
    """Training FLOPs per token: ``6 N + 12 L T d_attn`` (see the module docstring)."""
    layers, width = attention_layers(model)
    return 6 * matmul_parameters(model) + 12 * layers * context_length * width


def peak_flops(device: torch.device, compute_dtype: torch.dtype, tf32: bool) -> tuple[float | None, str]:
    """The device's peak FLOP/s for matmuls in ``compute_dtype`` and where the figure comes from:
    the GPU table, a measurement on the CPU, or None for a GPU not in the table (and MPS)."""
    if device.type == "cpu":
        return measured_cpu_peak(compute_dtype), "measured"
    if device.type != "cuda":
        return None, "unknown"
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAKS:
        if key in name:
            if compute_dtype in (torch.bfloat16, torch.float16):
                return peaks.bf16, name
            return (peaks.tf32 if tf32 else peaks.fp32), name
    return None, name


@functools.cache
def measured_cpu_peak(dtype: torch.dtype) -> float:
    """FLOP/s of the fastest of a few square matmuls in ``dtype`` at this process's thread count,
    measured once per process. Uses its own generator: the global RNG (dropout) is untouched."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(CPU_MATMUL_SIZE, CPU_MATMUL_SIZE, generator=generator).to(dtype)
    b = torch.randn(CPU_MATMUL_SIZE, CPU_MATMUL_SIZE, generator=generator).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(CPU_MATMUL_REPEATS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * CPU_MATMUL_SIZE**3 / max(best, 1e-9)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA's max allocated on a GPU, else the process's maximum RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, kilobytes on Linux


def mfu(tokens_per_s: float | None, flops: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None without both)."""
    return tokens_per_s * flops / peak if peak and tokens_per_s is not None else None


class SpeedMeter:
    """Tokens and seconds of the timed steps of a session: since the last reading, and in all.
    A step's seconds must include waiting for the device whenever its value is read."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.window_steps, self.window_s = 0, 0.0
        self.total_steps, self.total_s = 0, 0.0

    def add(self, seconds: float) -> None:
        self.window_steps += 1
        self.window_s += seconds
        self.total_steps += 1
        self.total_s += seconds

    def window_rate(self) -> float | None:
        """Tokens/s since the previous call (None when no step was timed since); starts a new window."""
        rate = self.window_steps * self.tokens_per_step / max(self.window_s, 1e-9) if self.window_steps else None
        self.window_steps, self.window_s = 0, 0.0
        return rate

    def session_rate(self) -> float | None:
        """Tokens/s over every timed step of the session."""
        return self.total_steps * self.tokens_per_step / max(self.total_s, 1e-9) if self.total_steps else None
