"""The next-token distribution of one prompt as decoding reshapes it (``lmlab probs``): the top
tokens' probabilities at each temperature, and the cumulative probability over the tokens sorted
by probability with the top-k and top-p cut-offs marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmlab.viz.numbers import plain_text

DPI = 100
BAR_INCHES = 0.24  # height of one bar row
PANEL_WIDTH_INCHES = 4.0
CUMULATIVE_INCHES = 3.4


def figure_size(temperatures: int, top_n: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``temperatures`` bar panels of ``top_n`` bars."""
    width = max(PANEL_WIDTH_INCHES * temperatures, 8.0)
    height = BAR_INCHES * top_n + 1.4 + CUMULATIVE_INCHES
    return round(width * DPI), round(height * DPI)


def plot_next_token_figure(bars: list[dict[str, Any]], cumulative: dict[str, Any], prompt: str, path: str | Path) -> Path:
    """Save the PNG. ``bars``: per temperature ``{"temperature", "tokens", "probs"}`` (top first);
    ``cumulative``: ``{"cumulative"}`` (the running sum over ranks 1, 2, ...), ``"top_k"`` /
    ``"top_k_kept"`` and ``"top_p"`` / ``"top_p_kept"`` (None when not asked)."""
    top_n = max(len(b["tokens"]) for b in bars)
    width, height = figure_size(len(bars), top_n)
    figure = Figure(figsize=(width / DPI, height / DPI), layout="constrained")
    FigureCanvasAgg(figure)
    names = [f"t{i}" for i in range(len(bars))]
    bar_share = BAR_INCHES * top_n + 1.4
    panels = figure.subplot_mosaic([names, ["cumulative"] * len(bars)],
                                   height_ratios=[bar_share, CUMULATIVE_INCHES])
    figure.suptitle(f"next token after {plain_text(repr(prompt))}")
    for name, bar in zip(names, bars):
        _draw_bars(panels[name], bar)
    _draw_cumulative(panels["cumulative"], cumulative)
    path = Path(path)
    figure.savefig(path, dpi=DPI)
    return path


def _draw_bars(axes, bar: dict[str, Any]) -> None:
    rows = range(len(bar["tokens"]))
    axes.barh(rows, bar["probs"], color="tab:blue")
    axes.set_yticks(rows, [plain_text(repr(token)) for token in bar["tokens"]], fontsize="small")
    axes.invert_yaxis()  # most likely on top
    axes.set(xlabel="probability", title=f"temperature {bar['temperature']:g}")
    axes.grid(axis="x", alpha=0.3)


def _draw_cumulative(axes, cumulative: dict[str, Any]) -> None:
    values = cumulative["cumulative"]
    axes.plot(range(1, len(values) + 1), values, color="black", label="cumulative probability (temperature 1)")
    if cumulative.get("top_k") is not None:
        axes.axvline(cumulative["top_k_kept"], color="tab:orange", linestyle="--",
                     label=f"top-k = {cumulative['top_k']}: {cumulative['top_k_kept']} tokens")
    if cumulative.get("top_p") is not None:
        axes.axhline(cumulative["top_p"], color="tab:green", linestyle=":", linewidth=1)
        axes.axvline(cumulative["top_p_kept"], color="tab:green", linestyle="--",
                     label=f"top-p = {cumulative['top_p']:g}: {cumulative['top_p_kept']} tokens")
    axes.set_xscale("log")
    axes.set(xlabel="tokens, most likely first (rank)", ylabel="cumulative probability", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
