"""Training curves of several runs: one panel per metric, each run a labelled line, against step
or time (``lmlab plot``)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlab.viz.numbers import plain_text

PANEL_INCHES = (6.0, 3.6)  # width, height of one panel
DPI = 100
Series = dict[str, tuple[list[float], list[float]]]  # series name → (xs, values)


def figure_size(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``panels`` panels (two columns once there are two)."""
    columns = min(panels, 2)
    rows = math.ceil(panels / columns)
    return round(PANEL_INCHES[0] * columns * DPI), round(PANEL_INCHES[1] * rows * DPI)


def plot_run_curves(runs: dict[str, dict[str, Series]], metrics: list[str], x_label: str, path: str | Path) -> Path:
    """Save a PNG of ``runs`` (run label → metric → its series) with one panel per metric in
    ``metrics`` order; a run's line is labelled with the run's label (plus the entry, for a metric
    with several series such as ``moe_load[0][1]``)."""
    width, height = figure_size(len(metrics))
    figure = Figure(figsize=(width / DPI, height / DPI), layout="constrained")
    FigureCanvasAgg(figure)
    columns = min(len(metrics), 2)
    grid = figure.subplots(math.ceil(len(metrics) / columns), columns, squeeze=False)
    panels = [axes for row in grid for axes in row]
    for metric, axes in zip(metrics, panels):
        for run, curves in runs.items():
            for name, (xs, values) in curves[metric].items():
                label = run if name == metric else f"{run} {name[len(metric):]}"
                axes.plot(xs, values, marker="." if len(xs) < 50 else None, label=plain_text(label))
        axes.set(xlabel=x_label, ylabel=plain_text(metric), title=plain_text(metric))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for axes in panels[len(metrics):]:
        axes.set_visible(False)
    path = Path(path)
    figure.savefig(path, dpi=DPI)
    return path
