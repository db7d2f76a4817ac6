"""The confusion matrix of a classifier as a PNG heat map (matplotlib, the ``viz`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lmlab.errors import LmlabError


def require_matplotlib() -> None:
    """:class:`LmlabError` (one line, naming the extra) unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LmlabError("the confusion-matrix PNG needs matplotlib; install it with: pip install 'lmlab[viz]'") from None


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> Path:
    """Save ``matrix[true][predicted]`` (counts, in ``labels`` order) as a PNG: rows are the true
    class, columns the predicted one, each cell annotated with its count."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.6 + 0.55 * len(labels)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    peak = max((max(row) for row in matrix), default=0)
    for t, row in enumerate(matrix):
        for p, count in enumerate(row):
            axes.text(p, t, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
