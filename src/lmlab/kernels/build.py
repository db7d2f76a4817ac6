"""Building and loading the native kernels: the C sources beside this file are compiled once per
machine and CPU into the lmlab cache, then loaded with ctypes (see the package docstring).

The libraries live in ``<cache>/kernels``, a directory only the current user may enter (created
with mode 0700, tightened if it is looser; refused, so PyTorch is used, if it belongs to someone
else or is a symlink). Beside each ``lmlab_kernels-<key>.so`` its sha256 is recorded at build time
(``.so.sha256``); a library is loaded only if it is a regular file of the current user that
neither group nor others may write and whose bytes match the recorded hash; anything else is
rebuilt. A compiler failure is remembered per key in ``lmlab_kernels-<key>.failed`` (with the
compiler's message), so it is not retried on every run: only when the key (sources, compiler,
CPU flags, compile options) changes or the marker is deleted.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import torch  # noqa: F401  (loads PyTorch's OpenMP runtime, which the kernels share)

from lmlab.errors import LmlabError
from lmlab.storage import cache_dir

SOURCES = [
    Path(__file__).with_name(name) for name in ("skinny_linear.c", "decode_attention.c", "log_softmax_topk.c", "decode_block.c")
]
HEADERS = [Path(__file__).with_name(name) for name in ("exp_nonpositive.h", "lmlab_kernels.h")]
DISABLE_ENV = "LMLAB_NATIVE_KERNELS"
MAX_ROWS = 8  # rows of the int8 kernel, new tokens of one attention call
BLOCK_ROWS = 16  # float32/bfloat16 rows of one skinny_linear or decode_block call (one pass over the weights)
COMPILE_OPTIONS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
_COMPILE_TIMEOUT_S = 120
_SMALL_FILE_BYTES = 4096  # a recorded hash or failure message is read up to this size

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
    lib = kernel_library(compiler, flags)
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


def kernel_library(compiler: str, cpu_flags: set[str]) -> ctypes.CDLL:
    """The kernel library for these sources, ``compiler`` and CPU, loaded from the private kernel
    directory if a trustworthy copy is there, else compiled (raises :class:`_Unavailable`)."""
    library = kernel_dir() / f"lmlab_kernels-{build_key(compiler, cpu_flags)}.so"
    _raise_if_failed_before(library)
    recorded = _read_private_text(_digest_path(library))
    cached = _load_verified(library, recorded) if recorded else None
    if cached is not None:
        return cached
    try:
        return _build(compiler, library)
    except OSError as exc:
        raise _Unavailable(f"cannot write the kernel library into {library.parent} ({_one_line(exc)})") from exc


def kernel_dir() -> Path:
    """``<cache>/kernels``, created with mode 0700 and tightened to it if looser. Raises
    :class:`_Unavailable` if it is not a real directory of the current user."""
    try:
        folder = cache_dir() / "kernels"
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except (LmlabError, OSError) as exc:
        raise _Unavailable(
            f"no private kernel directory ({_one_line(exc)}); set LMLAB_CACHE to a directory of your own"
        ) from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise _Unavailable(
            f"the kernel directory {folder} is not a directory of the current user; "
            "remove it or set LMLAB_CACHE to a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def build_key(compiler: str, cpu_flags: set[str]) -> str:
    """Names one build: a hash of the sources, the compiler (its path, size and modification time),
    the compile options and the CPU flags, so changing any of them builds afresh."""
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.read_bytes())
    digest.update(_compiler_identity(compiler).encode())
    digest.update(" ".join(COMPILE_OPTIONS).encode())
    digest.update(" ".join(sorted(cpu_flags)).encode())
    return digest.hexdigest()[:16]


def _compiler_identity(compiler: str) -> str:
    resolved = shutil.which(compiler) or compiler
    try:
        info = os.stat(resolved)
    except OSError:
        return resolved
    return f"{resolved} {info.st_size} {info.st_mtime_ns}"


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _failure_path(library: Path) -> Path:
    return library.with_suffix(".failed")


def _raise_if_failed_before(library: Path) -> None:
    """Raise the failure recorded for this build key, if any, instead of compiling again."""
    marker = _failure_path(library)
    if not marker.exists():
        return
    raise _compile_failed(_read_private_text(marker) or "no message recorded", marker)


def _compile_failed(reason: str, marker: Path) -> _Unavailable:
    return _Unavailable(
        f"compiling the kernel failed ({reason}); not retried until the sources, compiler or CPU "
        f"change, or until you delete {marker}"
    )


def _build(compiler: str, library: Path) -> ctypes.CDLL:
    """Compile the sources into ``library``, record its sha256 beside it and load it."""
    partial = library.with_name(f".{library.name}.{os.getpid()}.tmp")
    try:
        _compile(compiler, partial, library)
        partial.chmod(0o700)
        with open(partial, "rb") as built:
            digest = hashlib.file_digest(built, "sha256").hexdigest()
        lib = _load_verified(partial, digest)  # under this process's own name: no concurrent build replaces it
        if lib is None:
            raise _Unavailable(f"the compiled kernel {partial} changed before it was loaded")
        _write_private_text(_digest_path(library), digest)
        os.replace(partial, library)  # atomic: another process sees all of it or nothing
        return lib
    finally:
        partial.unlink(missing_ok=True)


def _compile(compiler: str, output: Path, library: Path) -> None:
    """Run the compiler; on failure remember its message for this build key and raise."""
    command = [compiler, *COMPILE_OPTIONS, *map(str, SOURCES), "-o", str(output), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = _one_line(exc)
    else:
        if done.returncode == 0:
            return
        reason = _one_line((done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1])
    marker = _failure_path(library)
    _write_private_text(marker, reason)
    raise _compile_failed(reason, marker)


def _load_verified(path: Path, sha256: str) -> ctypes.CDLL | None:
    """The library at ``path`` loaded if it is a private file of ours whose bytes hash to
    ``sha256``, else None. Only the current user can write the kernel directory, so nobody else
    can swap the file between the check and the load."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        if not _is_private(os.fstat(fd)) or hashlib.file_digest(handle, "sha256").hexdigest() != sha256:
            return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise _Unavailable(f"the compiled kernel {path} does not load ({_one_line(exc)})") from exc


def _is_private(info: os.stat_result) -> bool:
    """A regular file owned by the current user that neither group nor others may write."""
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _read_private_text(path: Path) -> str | None:
    """The stripped text of a small private file (see :func:`_is_private`), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        if not _is_private(os.fstat(fd)):
            return None
        return handle.read(_SMALL_FILE_BYTES).decode("utf-8", errors="replace").strip() or None


def _write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable and writable by the current user only."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def _one_line(reason: object) -> str:
    """``str(reason)`` squeezed onto one line (the type name if it is empty)."""
    return " ".join(str(reason).split()) or type(reason).__name__
