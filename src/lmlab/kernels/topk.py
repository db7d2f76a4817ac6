"""Beam search's log-softmax top-k in one pass over the logits (``log_softmax_topk.c``)."""

from __future__ import annotations

import torch

from lmlab.kernels.build import load_native


def log_softmax_topk(logits: torch.Tensor, k: int, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``torch.topk(logits.log_softmax(-1) + offset[:, None], k)`` in one pass over the logits:
    logits (R, V) float32 on the CPU, offset (R,) or None, 1 ≤ k ≤ V → values (R, k) best first,
    indices (R, k). None where the kernel does not apply (compute it with PyTorch)."""
    R, V = logits.shape
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or not 0 < k <= V or logits.requires_grad:
        return None
    if offset is not None and (offset.dtype != torch.float32 or offset.shape != (R,) or offset.device.type != "cpu"):
        return None
    lib = load_native()
    if lib is None:
        return None
    logits = logits.contiguous()
    offset = offset.contiguous() if offset is not None else None
    values, indices = torch.empty(R, k, dtype=torch.float32), torch.empty(R, k, dtype=torch.long)
    done = lib.log_softmax_topk(R, V, k, logits.data_ptr(), offset.data_ptr() if offset is not None else None,
                                values.data_ptr(), indices.data_ptr())
    return (values, indices) if done == 0 else None
