"""Directories lmlab writes into: claimed before the first write, locked while a run uses them.

lmlab writes only into a directory that is new, empty, or marked as its own. Claiming a directory
(:func:`claim_output_dir`) writes the marker ``.lmlab-output`` naming the kind of output (a
training run, a Hugging Face model, token shards); a directory holding anything else is refused
with a one-line :class:`LmlabError`, so ``--out ~`` or ``--out /`` never touches a user's files.
:func:`lock_output_dir` takes an exclusive ``flock`` on ``.lmlab-lock`` so two processes never
write one directory at once; the kernel releases it when the process exits, however it exits.
This module imports nothing from lmlab but its errors.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Iterable

from lmlab.errors import LmlabError, read_json_file

MARKER_FILE = ".lmlab-output"
LOCK_FILE = ".lmlab-lock"


def claim_output_dir(path: str | Path, kind: str, legacy_names: Iterable[str] = ()) -> Path:
    """Make ``path`` lmlab's output directory of ``kind`` (created if missing) and return it.

    A directory is accepted when it is new, empty, or marked with the same ``kind``; one without a
    marker whose entries are all in ``legacy_names`` (what lmlab wrote before it marked its
    directories) is adopted. Anything else is an :class:`LmlabError`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LmlabError(f"{path} is a file, not a directory; choose a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER_FILE
    if marker.is_file():
        _check_marked_kind(path, kind)
        return path
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in set(legacy_names))
    if foreign:
        raise LmlabError(
            f"{path} holds files lmlab did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
        )
    _write_marker(marker, kind)
    return path


def _check_marked_kind(path: Path, kind: str) -> None:
    fix = "choose a new or empty directory"
    marked = read_json_file(path / MARKER_FILE, fix, dict).get("kind")
    if marked != kind:
        raise LmlabError(f"{path} holds lmlab output of another kind ({marked!r}, not {kind!r}); {fix}")


def _write_marker(marker: Path, kind: str) -> None:
    tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"kind": kind, "written_by": "lmlab"}) + "\n", encoding="utf-8")
    os.replace(tmp, marker)


class DirectoryLock:
    """An exclusive lock on an output directory, held until :meth:`release` or process exit."""

    def __init__(self, handle: IO[str]):
        self._handle = handle

    def release(self) -> None:
        """Give the lock up (closing the lock file releases the ``flock``); idempotent."""
        self._handle.close()


def lock_output_dir(path: str | Path) -> DirectoryLock:
    """Lock ``path`` (which must exist) for this process, or :class:`LmlabError` if another process
    holds it. A lock of a process that died is released by the kernel, so it never goes stale."""
    path = Path(path)
    handle = open(path / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise LmlabError(
            f"{path} is in use by another lmlab process{f' (pid {holder})' if holder else ''}; "
            "wait for it to finish or choose another directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return DirectoryLock(handle)
