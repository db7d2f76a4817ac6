"""Loss curves: validation loss of several runs against optimizer step and wall-clock time."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_validation_curves(curves: dict[str, list[dict[str, float]]], path: str | Path) -> Path:
    """Save a PNG with two panels, validation loss against step and against seconds, one line per
    run. ``curves`` maps a run's name to its points ``{"step", "elapsed_s", "val_loss"}``."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    for name, points in curves.items():
        losses = [p["val_loss"] for p in points]
        by_step.plot([p["step"] for p in points], losses, marker=".", label=name)
        by_time.plot([p["elapsed_s"] for p in points], losses, marker=".", label=name)
    by_step.set(xlabel="step", ylabel="validation loss", title="against step")
    by_time.set(xlabel="seconds", title="against time")
    for axes in (by_step, by_time):
        axes.grid(alpha=0.3)
    by_time.legend(fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
