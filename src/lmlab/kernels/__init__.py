"""Native kernels for the hot spots PyTorch's libraries leave slow, built on first use.

:func:`skinny_linear` computes ``x · Wᵀ + b`` for 1–8 rows of float32 ``x`` on the CPU — every
matrix product of a decoding step. MKL streams a weight matrix at memory speed for one row but
takes about twice as long for 2–8 (batched greedy decoding, beam search); the kernel in
``skinny_linear.c`` stays near one pass over memory for all of them. :func:`skinny_linear_int8`
is the same product over an int8 weight with per-row scales, in exact integer arithmetic on
int16 activations. :func:`decode_attention` (``decode_attention.c``) is the attention of a few new
queries over a KV cache, reading each cached position from the row a table names, so that beam
search never moves cached keys. :func:`log_softmax_topk` gives each row's k best
log-probabilities without writing the whole log-softmax (a beam-search step).

The C source ships with the package and is compiled once per machine with the system C compiler
(``$CC``, else ``cc``/``gcc``; ``-O3 -march=native -fopenmp``) into the lmlab cache, then loaded
with ctypes. It shares PyTorch's OpenMP runtime, so ``torch.set_num_threads`` applies to it.
Where it cannot be built (no compiler, a CPU without AVX2/FMA, a PyTorch not on GNU OpenMP, or
``LMLAB_NATIVE_KERNELS=0``) every caller falls back to PyTorch; :func:`native_status` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from lmlab.cache import cache_dir

SOURCES = [Path(__file__).with_name(name) for name in ("skinny_linear.c", "decode_attention.c", "log_softmax_topk.c")]
HEADERS = [Path(__file__).with_name("exp_nonpositive.h")]
DISABLE_ENV = "LMLAB_NATIVE_KERNELS"
MAX_ROWS = 8

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet


def native_status() -> str:
    """'ready', or why the native kernel is not used."""
    load_native()
    return _status or "not tried"


def load_native() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first call), or None where it cannot be had."""
    global _library, _status
    if _status is not None:
        return _library
    with _lock:
        if _status is None:
            try:
                _library = _build_and_load()
                _status = "ready"
            except _Unavailable as why:
                _status = str(why)
    return _library


class _Unavailable(Exception):
    """Why the native kernel cannot be used here."""


def _build_and_load() -> ctypes.CDLL:
    if os.environ.get(DISABLE_ENV, "1").strip() == "0":
        raise _Unavailable(f"disabled by {DISABLE_ENV}=0")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise _Unavailable(f"no native kernel for {platform.system()} on {platform.machine()}")
    flags = _cpu_flags()
    if not {"avx2", "fma"} <= flags:
        raise _Unavailable("the CPU lacks AVX2/FMA")
    if not _torch_uses_gnu_openmp():
        raise _Unavailable("PyTorch does not run on GNU OpenMP, which the kernel shares")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise _Unavailable("no C compiler found (set CC)")
    library = _cached_build(compiler, flags)
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise _Unavailable(f"the compiled kernel does not load ({exc})") from exc
    lib.skinny_linear.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
    lib.skinny_linear_int8.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 5
    lib.skinny_linear_int8_f32.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
    lib.decode_attention.argtypes = (
        [ctypes.c_int] * 7 + [ctypes.c_void_p] + [ctypes.c_long] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_void_p]
    )
    lib.log_softmax_topk.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
    for entry in (lib.skinny_linear, lib.skinny_linear_int8, lib.skinny_linear_int8_f32, lib.decode_attention, lib.log_softmax_topk):
        entry.restype = ctypes.c_int
    return lib


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_uses_gnu_openmp() -> bool:
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _cached_build(compiler: str, flags: set[str]) -> Path:
    """The shared library for this source, compiler and CPU, compiled into the cache if missing."""
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    key = hashlib.sha256(source + compiler.encode() + " ".join(sorted(flags)).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"lmlab_kernels-{key}.so"
    if library.is_file():
        return library
    partial = folder / f".{library.name}.{os.getpid()}.tmp"
    command = [compiler, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", *map(str, SOURCES), "-o", str(partial), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable(f"compiling the kernel failed ({exc})") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise _Unavailable(f"compiling the kernel failed ({last})")
    os.replace(partial, library)  # atomic: another process sees all of it or nothing
    return library


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` through the native kernel: x (..., K) with at most 8 rows,
    weight (N, K) row-major, all float32 on the CPU, no gradient wanted → (..., N). None when any
    of that does not hold or the kernel is unavailable (use ``F.linear``)."""
    if weight.dtype != torch.float32 or not weight.is_contiguous() or weight.device.type != "cpu":
        return None
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return None
    x2 = _few_float_rows(x)  # (M, K)
    lib = load_native() if x2 is not None else None
    if lib is None:
        return None
    (rows, K), N = x2.shape, weight.size(0)
    y = torch.empty(rows, N, dtype=torch.float32)  # (M, N)
    lib.skinny_linear(rows, N, K, x2.data_ptr(), weight.data_ptr(), bias.data_ptr() if bias is not None else None, y.data_ptr())
    return y.view(*x.shape[:-1], N)


def _few_float_rows(x: torch.Tensor) -> torch.Tensor | None:
    """x (..., K) as contiguous rows (M, K) when it is float32 on the CPU with 1 to ``MAX_ROWS``
    rows (what the kernels take), else None."""
    K = x.size(-1)
    rows = x.numel() // K if K else 0
    if not 0 < rows <= MAX_ROWS or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return x.reshape(rows, K).contiguous()


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
    x2 = _few_float_rows(x)  # (M, K)
    lib = load_native() if x2 is not None else None
    if lib is None:
        return None
    (rows, K), N = x2.shape, qweight.size(0)
    y = torch.empty(rows, N, dtype=torch.float32)
    lib.skinny_linear_int8_f32(rows, N, K, x2.data_ptr(), qweight.data_ptr(), scale.data_ptr(), y.data_ptr())
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], N)


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    rows: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Softmax attention (scale 1/√D) of the queries of positions [start, start+T) over a cache:
    q (B, H, T, D) with T ≤ 8; keys, values (B, H_kv, S_max, D) contiguous buffers, whose first
    start+T positions are filled; rows (B, S_max) int32: the buffer row holding each (row,
    position), None for its own; allowed (B|1, 1, T, start+T) bool, True where a query may attend
    (None: causal). Float32 on the CPU without gradients → (B, T, H, D); None where it does not
    apply (use ``scaled_dot_product_attention``)."""
    B, H, T, D = q.shape
    S_max = keys.size(2)
    if not _cache_attention_applies(q, keys, values, start, rows, allowed):
        return None
    lib = load_native()
    if lib is None:
        return None
    if q.stride(3) != 1:
        q = q.contiguous()
    mask_ptr, a_b, a_t = None, 0, 0
    if allowed is not None:
        allowed = allowed[:, 0]  # (B|1, T, S)
        if allowed.stride(2) != 1:
            allowed = allowed.contiguous()
        mask_ptr, a_t = allowed.data_ptr(), allowed.stride(1)
        a_b = allowed.stride(0) if allowed.size(0) > 1 else 0
    out = torch.empty(B, T, H, D, dtype=torch.float32)  # (B, T, H, D)
    done = lib.decode_attention(
        B, H, keys.size(1), T, D, S_max, start,
        q.data_ptr(), q.stride(0), q.stride(1), q.stride(2),
        keys.data_ptr(), values.data_ptr(), rows.data_ptr() if rows is not None else None,
        mask_ptr, a_b, a_t, out.data_ptr(),
    )
    return out if done == 0 else None


def _cache_attention_applies(q, keys, values, start, rows, allowed) -> bool:
    B, H, T, D = q.shape
    tensors = [q, keys, values] + [t for t in (rows, allowed) if t is not None]
    if any(t.device.type != "cpu" for t in tensors) or (torch.is_grad_enabled() and q.requires_grad):
        return False
    if q.dtype != torch.float32 or keys.dtype != torch.float32 or values.dtype != torch.float32:
        return False
    if not (keys.is_contiguous() and values.is_contiguous()) or keys.shape != values.shape:
        return False
    if not 0 < T <= MAX_ROWS or keys.size(0) != B or keys.size(3) != D or start + T > keys.size(2):
        return False
    if rows is not None and (rows.dtype != torch.int32 or not rows.is_contiguous() or rows.shape != (B, keys.size(2))):
        return False
    if allowed is not None and (allowed.dtype != torch.bool or allowed.shape[1:] != (1, T, start + T) or allowed.size(0) not in (1, B)):
        return False
    return H % keys.size(1) == 0


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
