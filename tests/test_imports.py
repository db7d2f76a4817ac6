"""The import-direction rule of ARCHITECTURE.md, checked on the source with ``ast``."""

import ast
from pathlib import Path

import pytest

import lmlab

SRC = Path(lmlab.__file__).resolve().parent
EVERYONE = {"errors", "storage"}  # leaf modules (they import only lmlab.errors); every package may use them

# package → the lmlab packages it may import (besides itself and lmlab.errors)
ALLOWED = {
    "tokenizers": set(),
    "kernels": set(),
    "layers": {"kernels"},
    "models": {"layers"},
    "objectives": {"tokenizers"},
    "data": {"tokenizers", "objectives"},
    "generation": {"models", "layers", "tokenizers", "kernels"},
    "evaluation": {"models", "data", "objectives", "generation"},
    "interop": {"models", "tokenizers", "layers"},
    "training": {"tokenizers", "layers", "models", "objectives", "data", "generation", "evaluation", "interop"},
    "viz": set(),
}
TOP_LEVEL = {"cli", "errors", "storage", "__init__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path, this: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved.

    ``this`` is the file's own module name (by default, from its place under src/).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = this or module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):  # includes imports inside functions and TYPE_CHECKING blocks
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "lmlab":  # from lmlab import errors → lmlab.errors
                found.extend((node.lineno, f"lmlab.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, base))
    return found


def owner(module: str) -> str:
    """The package (or top-level module) of ``lmlab.x.y``: ``x``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_is_covered():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    top = {p.stem for p in SRC.glob("*.py")}
    packages -= TOP_LEVEL  # lmlab.cli is a package; like a top-level module it may import everything
    assert packages <= set(ALLOWED), f"add the new package(s) {packages - set(ALLOWED)} to the table"
    assert top <= TOP_LEVEL, f"new top-level module(s) {top - TOP_LEVEL}"


def test_resolver_handles_relative_imports(tmp_path):
    path = tmp_path / "windows.py"
    path.write_text(
        "from . import corpora\nfrom ..objectives import base\nfrom .corpora import x\n"
        "import lmlab.errors\nfrom lmlab import models\n\ndef f():\n    import lmlab.viz.plots\n"
    )
    names = [name for _, name in imported_modules(path, "lmlab.data.windows")]
    assert names == ["lmlab.data", "lmlab.objectives", "lmlab.data.corpora", "lmlab.errors",
                     "lmlab.models", "lmlab.viz.plots"]
    init = tmp_path / "__init__.py"
    init.write_text("from .base import x\nfrom .. import errors\n")
    assert [n for _, n in imported_modules(init, "lmlab.data")] == ["lmlab.data.base", "lmlab.errors"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_table(path):
    this = module_name(path)
    me = owner(this)
    violations = []
    for line, name in imported_modules(path):
        if name != "lmlab" and not name.startswith("lmlab."):
            continue
        target = owner(name)
        if target == "cli" and me != "cli":
            violations.append(f"line {line}: {name} (nobody imports cli)")
        elif me in ("cli", "__init__") or target in EVERYONE or target == me:
            continue
        elif me == "errors":
            violations.append(f"line {line}: {name} (lmlab.errors imports nothing from lmlab)")
        elif target not in ALLOWED.get(me, set()):
            violations.append(f"line {line}: {name} ({me} may import {sorted(ALLOWED[me]) or 'nothing else'})")
    assert not violations, f"{this} breaks the import rule: " + "; ".join(violations)


@pytest.mark.parametrize(
    "path", sorted((SRC / "tokenizers").rglob("*.py")), ids=lambda p: p.name
)
def test_tokenizers_never_import_torch(path):
    for line, name in imported_modules(path):
        assert name.split(".")[0] != "torch", f"{path.name} line {line} imports {name}"


def test_no_lmlab_package_imports_viz_except_cli():
    for path in modules():
        me = owner(module_name(path))
        if me in ("cli", "viz"):
            continue
        for line, name in imported_modules(path):
            assert not name.startswith("lmlab.viz"), f"{path} line {line} imports {name}"
