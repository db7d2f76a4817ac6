"""The one exception type that reaches users.

Every mistake a user can make (a bad config value, a missing file, a corrupt checkpoint, an
impossible decoding setting) raises :class:`LmlabError` with a single line saying what is wrong
and how to fix it. The CLI prints that line and exits with code 2. This module imports nothing
from lmlab, so every package may use it.
"""

from __future__ import annotations

import codecs
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


class LmlabError(Exception):
    """A user-facing error whose message is one line: what is wrong and how to fix it."""


STDIN_DECODING_ERRORS = "lmlab-stdin-not-utf8"


def read_text_file(path: Path | str, fix: str) -> str:
    """The UTF-8 text of ``path``, or :class:`LmlabError` with one line naming the file, what is
    wrong (missing, unreadable, not UTF-8 — with the offset of the first bad byte) and ``fix``."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LmlabError(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError as exc:
        raise LmlabError(f"{path} is not UTF-8 text (bad byte at offset {exc.start}); {fix}") from None
    except OSError as exc:
        raise LmlabError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from None


def read_json_file(path: Path | str, fix: str, kind: type | None = None) -> Any:
    """The JSON value stored in ``path`` (a :class:`pathlib.Path` or str), or :class:`LmlabError`
    with one line naming the file, what is wrong (missing, unreadable, not UTF-8, not JSON, not of
    ``kind``) and ``fix`` (how to repair it, e.g. "re-download it")."""
    path = Path(path)
    text = read_text_file(path, fix)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LmlabError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    if kind is not None and not isinstance(value, kind):
        raise LmlabError(f"{path} does not hold a JSON {JSON_TYPE_NAMES.get(kind, kind.__name__)}; {fix}")
    return value


def require_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import the optional dependency ``module``, or :class:`LmlabError` in one line saying that
    ``purpose`` (e.g. "plotting") needs it and which lmlab extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LmlabError(
            f"{purpose} needs the optional package {module}, which is not installed; "
            f"pip install 'lmlab[{extra}]'"
        ) from None


def _stdin_not_utf8(error: UnicodeError) -> tuple[str, int]:
    raise LmlabError("stdin is not UTF-8 text; convert it first (e.g. iconv -t UTF-8)")


codecs.register_error(STDIN_DECODING_ERRORS, _stdin_not_utf8)


def decode_stdin_as_utf8(stream: TextIO | None = None) -> None:
    """Make ``stream`` (default ``sys.stdin``) decode UTF-8 and raise :class:`LmlabError` on the
    first bytes that are not UTF-8, instead of a ``UnicodeDecodeError`` traceback. A stream that
    cannot be reconfigured (a test's stand-in) is left as it is."""
    stream = sys.stdin if stream is None else stream
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors=STDIN_DECODING_ERRORS)
