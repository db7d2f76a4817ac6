"""An embedding map (``lmlab embeddings``): labelled points in two dimensions, as a PNG
(matplotlib) or as one self-contained HTML page (inline script, no network) that zooms and pans
and shows a point's label and nearest neighbours on hover. Every label reaches the page as JSON
data and is put in as text, never as markup."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlab.viz.numbers import plain_text

PNG_SIZE = (900, 700)  # pixels
DPI = 100
TEMPLATE = "embedding_map.html"
DATA_SLOT = "/*EMBEDDING_MAP_DATA*/null"
SCRIPT_SAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def plot_embedding_map_png(labels: list[str], points: list[tuple[float, float]], title: str, path: str | Path) -> Path:
    """Save a PNG scatter of ``points`` (x, y), each annotated with its label."""
    figure = Figure(figsize=(PNG_SIZE[0] / DPI, PNG_SIZE[1] / DPI), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    axes.scatter(xs, ys, color="tab:blue")
    for label, x, y in zip(labels, xs, ys):
        axes.annotate(plain_text(label), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    axes.set(xlabel="principal component 1", ylabel="principal component 2", title=plain_text(title))
    axes.grid(alpha=0.3)
    path = Path(path)
    figure.savefig(path, dpi=DPI)
    return path


def write_embedding_map_html(numbers: dict[str, Any], path: str | Path) -> Path:
    """Save the interactive page for ``numbers`` (``{"title", "points": [{"label", "x", "y"}],
    "neighbours": [[{"label", "similarity"}, ...], ...]}``, neighbours in point order)."""
    template = resources.files("lmlab.viz").joinpath(TEMPLATE).read_text(encoding="utf-8")
    path = Path(path)
    path.write_text(template.replace(DATA_SLOT, script_json(numbers)), encoding="utf-8")
    return path


def script_json(value: Any) -> str:
    """``value`` as JSON that can sit inside an inline ``<script>``: no ``</script>``, no ``<!--``."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(SCRIPT_SAFE.get(c, c) for c in text)
