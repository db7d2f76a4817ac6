"""A grid of attention heat maps (matplotlib, PNG): one row per layer of each stack, one column
per head, queries down and keys across."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CELL_INCHES = 1.6  # each heat map's share of the figure
MARGIN_INCHES = 0.6  # room for the row and column titles
DPI = 100


def grid_size_px(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``rows`` × ``columns`` maps."""
    return (round((MARGIN_INCHES + CELL_INCHES * columns) * DPI), round((MARGIN_INCHES + CELL_INCHES * rows) * DPI))


def plot_attention_grid(data: dict[str, Any], path: str | Path) -> Path:
    """Save ``data`` (an attention trace's ``as_dict()``) as a PNG grid of heat maps: rows are the
    layers of every stack (encoder, decoder, cross), columns the heads."""
    rows = [(stack["name"], layer, weights) for stack in data["stacks"]
            for layer, weights in zip(data["layers"], stack["weights"])]
    heads = data["heads"]
    width, height = grid_size_px(len(rows), len(heads))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), len(heads), squeeze=False)
    for r, (name, layer, weights) in enumerate(rows):
        for h, head in enumerate(heads):
            ax = axes[r][h]
            ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"{name} {layer}", fontsize=8)
    figure.subplots_adjust(left=0.4 / (width / DPI), right=1 - 0.05 / (width / DPI),
                           top=1 - 0.3 / (height / DPI), bottom=0.1 / (height / DPI), wspace=0.08, hspace=0.12)
    path = Path(path)
    figure.savefig(path, dpi=DPI)
    return path
