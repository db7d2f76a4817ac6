"""Tests never depend on wall-clock time: a subprocess or wait timeout is only a hang guard.

A timeout of a couple of minutes fails on a loaded machine (2 CPU cores shared by many runs), so
every ``timeout=`` in the tests, literal or through a module constant, must be at least
:data:`MIN_HANG_GUARD_S`.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MIN_HANG_GUARD_S = 1800


def _module_constants(tree: ast.Module) -> dict[str, object]:
    """Module-level ``NAME = <constant>`` assignments."""
    constants: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


def _short_timeouts(path: Path) -> list[str]:
    """``file:line timeout=value`` for every timeout keyword below the hang-guard minimum."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = _module_constants(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.keyword) or node.arg != "timeout":
            continue
        value = node.value
        seconds = value.value if isinstance(value, ast.Constant) else constants.get(getattr(value, "id", None))
        if isinstance(seconds, (int, float)) and seconds < MIN_HANG_GUARD_S:
            found.append(f"{path.relative_to(TESTS)}:{node.value.lineno} timeout={seconds}")
    return found


def test_timeouts_in_tests_are_only_hang_guards():
    short = [hit for path in sorted(TESTS.rglob("*.py")) for hit in _short_timeouts(path)]
    assert not short, f"timeouts below {MIN_HANG_GUARD_S} s make tests depend on machine load: {short}"
