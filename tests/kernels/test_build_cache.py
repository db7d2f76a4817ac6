"""The kernel cache: a private directory, libraries loaded only when ours and hash-checked, and a
compiler failure remembered per build key instead of retried on every run."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.kernels import build

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler to build the test libraries")
FLAGS = {"avx2", "fma"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LMLAB_CACHE", str(path))
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tiny_library(tmp_path: Path, name: str, value: int) -> Path:
    """A real shared library whose ``which()`` returns ``value``."""
    source = tmp_path / f"{name}.c"
    source.write_text(f"int which(void) {{ return {value}; }}\n")
    library = tmp_path / f"{name}.so"
    subprocess.run([CC, "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


def _fake_compiler(tmp_path: Path, body: str) -> tuple[str, Path]:
    """A shell script standing in for the compiler: it logs each call, then runs ``body`` with
    ``$out`` set to the file it was asked to write. Returns its path and the log."""
    log = tmp_path / "compiler-calls.log"
    script = tmp_path / "fake-cc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo call >> "{log}"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then out="$2"; fi; shift; done\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return str(script), log


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def genuine(tmp_path) -> tuple[str, Path]:
    """A fake compiler that 'builds' a library whose which() returns 1."""
    built = _tiny_library(tmp_path, "genuine", 1)
    return _fake_compiler(tmp_path, f'cp "{built}" "$out"')


def _library_path(compiler: str) -> Path:
    return build.kernel_dir() / f"lmlab_kernels-{build.build_key(compiler, FLAGS)}.so"


def _plant(tmp_path: Path, compiler: str, mode: int, recorded: str | None) -> Path:
    """Put a library whose which() returns 666 where the build would go, with ``mode`` and
    ``recorded`` ("right": its own hash, "wrong": another, None: no hash file)."""
    planted = _tiny_library(tmp_path, "planted", 666)
    target = _library_path(compiler)
    shutil.copyfile(planted, target)
    target.chmod(mode)
    digest = {"right": hashlib.sha256(planted.read_bytes()).hexdigest(), "wrong": "0" * 64}.get(recorded)
    if digest:
        target.with_name(target.name + ".sha256").write_text(digest + "\n")
    return target


# --- the kernel directory -----------------------------------------------------------------------


def test_the_kernel_directory_is_created_private(cache):
    assert build.kernel_dir() == cache / "kernels"
    assert _mode(cache / "kernels") == 0o700


def test_a_kernel_directory_with_loose_permissions_is_tightened(cache):
    (cache / "kernels").mkdir(parents=True)
    (cache / "kernels").chmod(0o777)
    build.kernel_dir()
    assert _mode(cache / "kernels") == 0o700


def test_a_kernel_directory_of_another_user_is_refused(cache, monkeypatch):
    (cache / "kernels").mkdir(parents=True)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(cache / "kernels").st_uid + 1)
    with pytest.raises(build._Unavailable, match="is not a directory of the current user; remove it or set LMLAB_CACHE"):
        build.kernel_dir()


def test_a_symlinked_kernel_directory_is_refused(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.mkdir()
    (cache / "kernels").symlink_to(elsewhere)
    with pytest.raises(build._Unavailable, match="not a directory of the current user"):
        build.kernel_dir()


# --- what gets loaded ---------------------------------------------------------------------------


@needs_cc
def test_a_build_records_its_hash_and_is_reused(genuine):
    compiler, log = genuine
    assert build.kernel_library(compiler, FLAGS).which() == 1
    library = _library_path(compiler)
    assert library.with_name(library.name + ".sha256").read_text().strip() == hashlib.sha256(library.read_bytes()).hexdigest()
    assert not library.stat().st_mode & 0o077
    assert build.kernel_library(compiler, FLAGS).which() == 1
    assert _calls(log) == 1
    assert not list(library.parent.glob(".*tmp"))


@needs_cc
@pytest.mark.parametrize(
    "mode, recorded",
    [(0o700, None), (0o700, "wrong"), (0o777, "right"), (0o720, "right")],
    ids=["no-recorded-hash", "wrong-hash", "world-writable", "group-writable"],
)
def test_a_planted_library_is_rebuilt_not_loaded(tmp_path, genuine, mode, recorded):
    compiler, log = genuine
    build.kernel_dir()
    _plant(tmp_path, compiler, mode, recorded)
    assert build.kernel_library(compiler, FLAGS).which() == 1
    assert _calls(log) == 1


@needs_cc
def test_a_planted_library_with_its_right_hash_and_private_mode_is_what_a_build_looks_like(tmp_path, genuine):
    compiler, log = genuine  # the control for the test above: the checks, not the planting, refuse
    build.kernel_dir()
    _plant(tmp_path, compiler, 0o700, "right")
    assert build.kernel_library(compiler, FLAGS).which() == 666
    assert _calls(log) == 0


@needs_cc
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_library_of_another_user_is_rebuilt_not_loaded(tmp_path, genuine):
    compiler, log = genuine
    build.kernel_dir()
    os.chown(_plant(tmp_path, compiler, 0o755, "right"), 65534, 65534)
    assert build.kernel_library(compiler, FLAGS).which() == 1
    assert _calls(log) == 1


# --- a failing compiler -------------------------------------------------------------------------


def test_a_failing_compiler_is_remembered_until_the_key_changes_or_the_marker_goes(tmp_path):
    compiler, log = _fake_compiler(tmp_path, 'echo "fake-cc: error: no such luck" >&2; exit 1')
    with pytest.raises(build._Unavailable) as first:
        build.kernel_library(compiler, FLAGS)
    with pytest.raises(build._Unavailable) as second:
        build.kernel_library(compiler, FLAGS)
    assert _calls(log) == 1
    marker = _library_path(compiler).with_suffix(".failed")
    assert str(first.value) == str(second.value) == (
        "compiling the kernel failed (fake-cc: error: no such luck); not retried until the sources, "
        f"compiler or CPU change, or until you delete {marker}"
    )
    with pytest.raises(build._Unavailable):
        build.kernel_library(compiler, FLAGS | {"avx512f"})  # another key: tried again
    assert _calls(log) == 2
    marker.unlink()
    with pytest.raises(build._Unavailable):
        build.kernel_library(compiler, FLAGS)
    assert _calls(log) == 3


def test_native_status_reports_a_remembered_compiler_failure_without_compiling_again(tmp_path, cache):
    compiler, log = _fake_compiler(tmp_path, 'echo "fake-cc: error: no such luck" >&2; exit 1')
    code = "from lmlab.kernels import native_status; print(native_status())"
    env = {**os.environ, "LMLAB_CACHE": str(cache), "CC": compiler, "LMLAB_NATIVE_KERNELS": "1"}
    statuses = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    if not statuses[0].startswith("compiling"):
        pytest.skip(f"this machine never reaches the compiler: {statuses[0].strip()}")
    assert statuses[0] == statuses[1]
    assert "fake-cc: error: no such luck" in statuses[0] and ".failed" in statuses[0]
    assert _calls(log) == 1
