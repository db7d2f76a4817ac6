"""The one exception type that reaches users.

Every mistake a user can make (a bad config value, a missing file, a corrupt checkpoint, an
impossible decoding setting) raises :class:`LmlabError` with a single line saying what is wrong
and how to fix it. The CLI prints that line and exits with code 2. This module imports nothing
from lmlab, so every package may use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean"}


class LmlabError(Exception):
    """A user-facing error whose message is one line: what is wrong and how to fix it."""


def read_json_file(path: Path | str, fix: str, kind: type | None = None) -> Any:
    """The JSON value stored in ``path`` (a :class:`pathlib.Path` or str), or :class:`LmlabError`
    with one line naming the file, what is wrong (missing, unreadable, not UTF-8, not JSON, not of
    ``kind``) and ``fix`` (how to repair it, e.g. "re-download it")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmlabError(f"{path} does not exist; {fix}") from None
    except UnicodeDecodeError:
        raise LmlabError(f"{path} is not UTF-8 text; {fix}") from None
    except OSError as exc:
        raise LmlabError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LmlabError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    if kind is not None and not isinstance(value, kind):
        raise LmlabError(f"{path} does not hold a JSON {JSON_TYPE_NAMES.get(kind, kind.__name__)}; {fix}")
    return value
