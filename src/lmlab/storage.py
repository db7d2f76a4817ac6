"""Where lmlab keeps what it downloads and builds (corpora, compiled kernels): one directory."""

from __future__ import annotations

import os
from pathlib import Path

from lmlab.errors import LmlabError


def cache_dir() -> Path:
    """The cache directory, created on demand.

    ``$LMLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/lmlab``, else ``~/.cache/lmlab``.
    """
    if os.environ.get("LMLAB_CACHE"):
        path = Path(os.environ["LMLAB_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "lmlab"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise LmlabError(
            f"cannot create the cache directory {path} ({reason}); set LMLAB_CACHE to a writable directory"
        ) from None
    return path
