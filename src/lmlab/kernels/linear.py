"""Few-row matrix products in the native kernel (``skinny_linear.c``): float32, and int8 weights
with int16 activations."""

from __future__ import annotations

import torch

from lmlab.kernels.build import BLOCK_ROWS, MAX_ROWS, _library_now, load_native

_ENTRIES = {torch.float32: "skinny_linear", torch.bfloat16: "skinny_linear_bf16"}


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` through the native kernel: x (..., K) with at most 16 rows,
    weight (N, K) row-major, all float32 — or all bfloat16, computed in float32 and rounded once —
    on the CPU, no gradient wanted → (..., N). None when any of that does not hold or the kernel
    is unavailable (use ``F.linear``). Called for every projection of every decoding step, so the
    checks are kept to cheap attribute reads."""
    lib = _library_now()
    dtype = weight.dtype
    if lib is None or dtype not in _ENTRIES or not weight.is_cpu or not weight.is_contiguous():
        return None
    if bias is not None and (bias.dtype != dtype or not bias.is_contiguous()):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return None
    rows, x = _few_rows(x, dtype)
    if rows == 0:
        return None
    N = weight.size(0)
    y = torch.empty(x.shape[:-1] + (N,), dtype=dtype)  # (..., N)
    entry = getattr(lib, _ENTRIES[dtype])
    entry(rows, N, x.size(-1), x.data_ptr(), weight.data_ptr(), bias.data_ptr() if bias is not None else None, y.data_ptr())
    return y


def _few_rows(x: torch.Tensor, dtype: torch.dtype = torch.float32, most: int = BLOCK_ROWS) -> tuple[int, torch.Tensor]:
    """x (..., K) made contiguous, and its number of rows when it is ``dtype`` on the CPU with 1 to
    ``most`` rows (what the kernel takes), else 0."""
    K = x.size(-1)
    rows = x.numel() // K if K else 0
    if not 0 < rows <= most or x.dtype != dtype or not x.is_cpu:
        return 0, x
    return rows, x if x.is_contiguous() else x.contiguous()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An (N, K) float weight as int8 rows and one float32 scale per row (its largest |value| / 127):
    weight ≈ q · scale[:, None]. → q (N, K) int8 contiguous, scale (N,) float32."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # (N,)
    q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
    return q, scale


def quantize_rows(x: torch.Tensor, max_abs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (M, K) as int16 values in [-max_abs, max_abs] and one float32 scale per row:
    x ≈ q · scale[:, None]. → q (M, K) int16, scale (M,)."""
    scale = (x.abs().amax(dim=1) / max_abs).clamp(min=torch.finfo(torch.float32).tiny)  # (M,)
    q = (x / scale[:, None]).round().clamp(-max_abs, max_abs).to(torch.int16)
    return q, scale


def int8_activation_range(K: int) -> int:
    """The largest |int16 activation| for which a K-long int8 · int16 dot product fits in int32."""
    return min(2**15 - 1, (2**31 - 1) // (127 * K))


def skinny_linear_int8(
    xq: torch.Tensor, xscale: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor | None:
    """``(xq · qweightᵀ) · xscale[:, None] · scale[None, :]``, the sums exact in int32: xq (M, K)
    int16 rows (M ≤ 8) with |xq| ≤ :func:`int8_activation_range` (see :func:`quantize_rows`),
    xscale (M,), qweight (N, K) int8 row-major, scale (N,) float32 → (M, N) float32. None where
    the kernel is unavailable or the rows are too many."""
    rows, K = xq.shape
    if not 0 < rows <= MAX_ROWS or xq.dtype != torch.int16 or qweight.dtype != torch.int8:
        return None
    if not qweight.is_contiguous() or qweight.size(1) != K:
        return None
    lib = load_native()
    if lib is None:
        return None
    xq, xscale, scale = xq.contiguous(), xscale.float().contiguous(), scale.float().contiguous()
    N = qweight.size(0)
    y = torch.empty(rows, N, dtype=torch.float32)
    lib.skinny_linear_int8(rows, N, K, xq.data_ptr(), xscale.data_ptr(), qweight.data_ptr(), scale.data_ptr(), y.data_ptr())
    return y


def skinny_linear_int8_float(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor | None:
    """An int8 linear layer on float32 rows: x (..., K) with at most 8 rows is rounded to int16
    per row inside the kernel, then as :func:`skinny_linear_int8`, plus ``bias`` → (..., N). None
    where it does not apply (use the float weights)."""
    rows, x = _few_rows(x, most=MAX_ROWS)
    lib = load_native() if rows else None
    if lib is None:
        return None
    K, N = x.size(-1), qweight.size(0)
    y = torch.empty(x.shape[:-1] + (N,), dtype=torch.float32)  # (..., N)
    lib.skinny_linear_int8_f32(rows, N, K, x.data_ptr(), qweight.data_ptr(), scale.data_ptr(), y.data_ptr())
    if bias is not None:
        y += bias
    return y
