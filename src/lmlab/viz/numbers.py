"""The numbers a figure drew, written beside it as JSON (``curves.png`` → ``curves.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def numbers_path(picture: str | Path) -> Path:
    """Where the numbers of ``picture`` go: the same name with ``.json``."""
    return Path(picture).with_suffix(".json")


def write_numbers(numbers: dict[str, Any], picture: str | Path) -> Path:
    """Write ``numbers`` (plain JSON values) beside ``picture``; returns the JSON file's path."""
    path = numbers_path(picture)
    path.write_text(json.dumps(numbers, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def plain_text(label: str) -> str:
    """``label`` as matplotlib should show it literally: ``$`` escaped (no mathtext), control
    characters such as newlines shown as escapes."""
    shown = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in label)
    return shown.replace("$", r"\$")
