"""Building and loading the native kernels: the C sources beside this file are compiled once per
machine and CPU into the lmlab cache, then loaded with ctypes (see the package docstring)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch  # noqa: F401  (loads PyTorch's OpenMP runtime, which the kernels share)

from lmlab.storage import cache_dir

SOURCES = [
    Path(__file__).with_name(name) for name in ("skinny_linear.c", "decode_attention.c", "log_softmax_topk.c", "decode_block.c")
]
HEADERS = [Path(__file__).with_name(name) for name in ("exp_nonpositive.h", "lmlab_kernels.h")]
DISABLE_ENV = "LMLAB_NATIVE_KERNELS"
MAX_ROWS = 8

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet


def native_status() -> str:
    """'ready', or why the native kernel is not used."""
    load_native()
    return _status or "not tried"


class Heads(ctypes.Structure):
    """A (B, heads, T, D) float32 tensor view as the kernels take it (``heads`` in lmlab_kernels.h):
    its address and its strides over B, heads and T (D has stride 1)."""

    _fields_ = [("data", ctypes.c_void_p), ("b", ctypes.c_long), ("h", ctypes.c_long), ("t", ctypes.c_long)]

    @classmethod
    def of(cls, x) -> "Heads":
        """The view of a (B, heads, T, D) tensor whose last dimension is contiguous."""
        b, h, t, _ = x.stride()
        return cls(x.data_ptr(), b, h, t)


def _library_now() -> ctypes.CDLL | None:
    """:func:`load_native` without the call once the library is settled (every projection of a
    decoding step asks)."""
    return _library if _status is not None else load_native()


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
    lib.skinny_linear_bf16.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
    lib.decode_attention.argtypes = (
        [ctypes.c_int] * 7 + [Heads] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_void_p]
    )
    lib.log_softmax_topk.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4
    lib.decode_block.argtypes = (
        [ctypes.c_void_p] + [ctypes.c_int] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 2
        + [ctypes.c_long] * 2 + [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_int] + [ctypes.c_void_p]
    )
    entries = (
        "skinny_linear", "skinny_linear_int8", "skinny_linear_int8_f32", "skinny_linear_bf16",
        "decode_attention", "log_softmax_topk", "decode_block",
    )
    for entry in entries:
        getattr(lib, entry).restype = ctypes.c_int
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
