"""PNG plots of evaluation results (matplotlib, no display needed).

* :func:`plot_position_losses` — mean loss at each context position, one line per model and reading direction
  (the arrow-of-time curve), with a second panel of backward − forward differences when pairs are given;
* :func:`plot_bars` — one panel per metric, bars grouped by model and coloured by reading direction.

Both take plain data (lists and dicts), so any command can reuse them.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

WAY_COLOURS = {"forward": "#1f77b4", "backward": "#d62728"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, plt, path: str | os.PathLike[str]) -> Path:
    """Lay out ``fig``, write it as a PNG at ``path`` (folders made) and close it."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def position_axes(ax, ylabel: str, title: str, *, zero_line: bool = False) -> None:
    """Finish a loss-by-position panel: log x axis of context position + 1 with plain tick labels (1, 10, 100),
    axis labels, title, grid, an optional line at 0 and the legend."""
    from matplotlib.ticker import StrMethodFormatter

    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.set_xlabel("context position + 1 (tokens already read)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _finite(values: Sequence[float | None], bins: int = 48) -> tuple[list[float], list[float]]:
    """``(position + 1, value)`` of the finite values; past 64 positions, means over ``bins`` log-spaced bins
    (drawn at each bin's mean position), so long curves stay readable."""
    points = [(i + 1, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(values) <= 64 or not points:
        return [x for x, _ in points], [y for _, y in points]
    edges = sorted({round(len(values) ** (k / bins)) for k in range(bins + 1)} | {len(values) + 1})
    xs, ys = [], []
    for lo, hi in zip(edges, edges[1:]):
        inside = [(x, y) for x, y in points if lo <= x < hi]
        if inside:
            xs.append(sum(x for x, _ in inside) / len(inside))
            ys.append(sum(y for _, y in inside) / len(inside))
    return xs, ys


def plot_position_losses(curves: Mapping[tuple[str, str], Sequence[float | None]], path: str | os.PathLike[str], *,
                         differences: Mapping[str, Sequence[float | None]] | None = None,
                         title: str = "Loss by context position") -> Path:
    """``curves[(model, way)]`` is the mean loss (nats) at context positions 0, 1, …; ``differences[label]`` an
    optional backward − forward curve per label. Positions are drawn on a log axis (position + 1); curves longer
    than 64 positions are averaged over log-spaced bins."""
    plt = _pyplot()
    panels = 2 if differences else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    models = list(dict.fromkeys(model for model, _ in curves))
    for (model, way), values in curves.items():
        xs, ys = _finite(values)
        ax.plot(xs, ys, color=WAY_COLOURS.get(way, "#555555"), linestyle=LINESTYLES[models.index(model) % 4],
                linewidth=1.4, label=f"{model} ({way})")
    position_axes(ax, "mean loss (nats)", title)
    if differences:
        ax = axes[0][1]
        for i, (label, values) in enumerate(differences.items()):
            xs, ys = _finite(values)
            ax.plot(xs, ys, linestyle=LINESTYLES[i % 4], linewidth=1.4, label=label)
        position_axes(ax, "backward − forward loss (nats)", "Arrow of time: backward − forward", zero_line=True)
    return save_figure(fig, plt, path)


def _grid(panels: int, columns: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid holding ``panels`` panels, at most ``columns`` a row."""
    cols = max(1, min(columns, panels))
    return math.ceil(max(1, panels) / cols), cols


def plot_bars(metrics: Mapping[str, Mapping[tuple[str, str], float | None]], path: str | os.PathLike[str], *,
              title: str = "Scores by model and reading direction",
              errors: Mapping[str, Mapping[tuple[str, str], tuple[float, float]]] | None = None,
              colours: Mapping[str, str] | None = None, ylabel: str | None = None,
              fmt: str = "%.3f", bottom: float | None = None) -> Path:
    """``metrics[name][(model, way)]`` → one panel per metric (at most three a row), bars grouped by model, centred
    on the model's tick, coloured by way (``colours[way]``, else the reading-direction colours). A None value is a
    direction the metric does not apply to: it is left out and the panel names it below its bars (a panel with no
    value says so). ``errors[name][(model, way)]`` is an optional ``(low, high)`` interval drawn as an error bar;
    ``bottom`` starts the value axis there instead of at 0 (for values that differ by little)."""
    plt = _pyplot()
    names = list(metrics)
    palette = {**WAY_COLOURS, **(colours or {})}
    spare = itertools.cycle(OTHER_COLOURS)
    rows, cols = _grid(len(names))
    width_in = max(4.2, 1.4 * max((len({m for m, _ in metrics[n]}) for n in names), default=1) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width_in * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        _bar_panel(ax, name, metrics[name], palette, spare, (errors or {}).get(name, {}), fmt, bottom, ylabel,
                   legend=name == names[0])
    fig.suptitle(title)
    return save_figure(fig, plt, path)


def _bar_panel(ax, name: str, metric: Mapping[tuple[str, str], float | None], palette: dict, spare, errors: Mapping,
               fmt: str, bottom: float | None, ylabel: str | None, *, legend: bool) -> None:
    """One metric's bars: each model's bars centred on its tick, whatever ways it has."""
    values = {key: v for key, v in metric.items() if v is not None and math.isfinite(v)}
    models = list(dict.fromkeys(model for model, _ in metric))
    ways = list(dict.fromkeys(way for _, way in values))
    for way in ways:
        palette.setdefault(way, next(spare))
    width = 0.8 / max(1, max((sum((m, w) in values for w in ways) for m in models), default=1))
    placed: dict[str, list[tuple[float, float, tuple[str, str]]]] = {w: [] for w in ways}
    for i, model in enumerate(models):
        present = [w for w in ways if (model, w) in values]
        for j, way in enumerate(present):
            placed[way].append((i + (j - (len(present) - 1) / 2) * width, values[(model, way)], (model, way)))
    for way, bars_at in placed.items():
        xs, ys, keys = [x for x, _, _ in bars_at], [y for _, y, _ in bars_at], [k for _, _, k in bars_at]
        spans = [errors.get(k) for k in keys]
        yerr = None
        if any(sp is not None for sp in spans):
            yerr = [[max(0.0, y - sp[0]) if sp else 0.0 for y, sp in zip(ys, spans)],
                    [max(0.0, sp[1] - y) if sp else 0.0 for y, sp in zip(ys, spans)]]
        bars = ax.bar(xs, ys, width=width, color=palette[way], label=way, yerr=yerr, capsize=3 if yerr else 0,
                      error_kw={"elinewidth": 1.0, "ecolor": "black"})
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    long = max((len(line) for m in models for line in m.split("\n")), default=0) > 20
    ax.set_xticks(range(len(models)), models, rotation=20 if long else 0, ha="right" if long else "center",
                  fontsize=8)
    ax.set_title(name)
    if ylabel:
        ax.set_ylabel(ylabel)
    if bottom is None:
        ax.axhline(0.0, color="black", linewidth=0.6)
    ax.grid(True, axis="y", alpha=0.3)
    ax.margins(y=0.08)
    low, high = ax.get_ylim()
    low = low if bottom is None else bottom
    ax.set_ylim(low, high + 0.14 * (high - low))  # room for the legend above the bars and their labels
    missing = [f"{model} ({way})" for (model, way), v in metric.items() if v is None]
    if not values:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    elif missing:
        ax.text(0.5, 0.02, "not applicable: " + ", ".join(missing), ha="center", va="bottom", fontsize=7,
                style="italic", transform=ax.transAxes, wrap=True)
    if values and (len(ways) > 1 or legend):
        ax.legend(fontsize=8, loc="upper center", ncol=min(len(ways), 4))
