"""PNG plots of evaluation results (matplotlib, no display needed).

* :func:`plot_position_losses` — mean loss at each context position, one line per model and reading direction
  (the arrow-of-time curve), with a second panel of backward − forward differences when pairs are given;
* :func:`plot_bars` — one panel per metric, bars grouped by model and coloured by reading direction.

Both take plain data (lists and dicts), so any command can reuse them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

WAY_COLOURS = {"forward": "#1f77b4", "backward": "#d62728"}
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
    ax.set_xscale("log")
    ax.set_xlabel("context position + 1 (tokens already read)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if differences:
        ax = axes[0][1]
        for i, (label, values) in enumerate(differences.items()):
            xs, ys = _finite(values)
            ax.plot(xs, ys, linestyle=LINESTYLES[i % 4], linewidth=1.4, label=label)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("context position + 1 (tokens already read)")
        ax.set_ylabel("backward − forward loss (nats)")
        ax.set_title("Arrow of time: backward − forward")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, plt, path)


def plot_bars(metrics: Mapping[str, Mapping[tuple[str, str], float | None]], path: str | os.PathLike[str], *,
              title: str = "Scores by model and reading direction") -> Path:
    """``metrics[name][(model, way)]`` → one panel per metric; missing or None values are left out (a panel with
    no value says so)."""
    plt = _pyplot()
    names = list(metrics)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = {key: v for key, v in metrics[name].items() if v is not None and math.isfinite(v)}
        models = list(dict.fromkeys(model for model, _ in values))
        ways = list(dict.fromkeys(way for _, way in values))
        width = 0.8 / max(1, len(ways))
        for j, way in enumerate(ways):
            xs = [i + (j - (len(ways) - 1) / 2) * width for i, m in enumerate(models) if (m, way) in values]
            ys = [values[(m, way)] for m in models if (m, way) in values]
            bars = ax.bar(xs, ys, width=width, color=WAY_COLOURS.get(way, "#555555"), label=way)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.set_title(name)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(True, axis="y", alpha=0.3)
        if not values:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        elif len(ways) > 1 or name == names[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, plt, path)
