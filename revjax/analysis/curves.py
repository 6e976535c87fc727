"""PNG plots of an experiment (matplotlib, Agg): learning curves, loss by position, gradient norms, direction gaps.

Each takes the groups of :func:`revjax.analysis.experiment.read_experiment` (or the tables computed from them) and
draws one line per group (seeds differ only by seed: their mean, with the 95% t-interval shaded where n ≥ 2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from revjax.analysis.experiment import LEVEL, AnalysisError, Group, interval_curves, read_h5, t_interval
from revjax.analysis.plots import (LINESTYLES, OTHER_COLOURS, WAY_COLOURS, _pyplot, plot_bars, position_axes,
                                   save_figure)

COLOURS = {**WAY_COLOURS, "bidirectional": OTHER_COLOURS[0]}
OTHERS = OTHER_COLOURS[1:]
PARAM_GROUPS = ("embedding", "head", "attention", "mlp")


def _style(index: int, way: str) -> dict:
    return {"color": COLOURS.get(way, OTHERS[index % len(OTHERS)]), "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def _band(ax, xs, mean, half, n, label: str, style: dict) -> None:
    ax.plot(xs, mean, linewidth=1.6, label=f"{label} (n={int(np.max(n)) if len(n) else 0})", **style)
    shaded = np.isfinite(half)
    if shaded.any():
        ax.fill_between(np.asarray(xs)[shaded], (mean - half)[shaded], (mean + half)[shaded], color=style["color"],
                        alpha=0.18, linewidth=0)


def _common(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The x values every series has, and each series' values there."""
    xs = sorted(set.intersection(*(set(x.tolist()) for x, _ in series))) if series else []
    return np.asarray(xs), [y[np.searchsorted(x, xs)] if len(xs) else y[:0] for x, y in series]


def plot_learning_curves(groups: Sequence[Group], path: str | os.PathLike[str], level: float = LEVEL) -> Path | None:
    """Training loss and val bpb against tokens seen (step × total_batch_tokens), one line per group."""
    panels = [("loss", "training loss (nats)", "Training loss"), ("val_bpb", "validation bits per byte",
                                                                  "Validation bpb")]
    if not any(len(r.series(key)[0]) for g in groups for r in g.runs for key, _, _ in panels):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (key, ylabel, title) in zip(axes, panels):
        for i, g in enumerate(groups):
            series = [r.series(key) for r in g.runs]
            series = [(x, y) for x, y in series if len(x)]
            if not series:
                continue
            style = _style(i, g.direction)
            for x, y in series:
                ax.plot(x, y, linewidth=0.6, alpha=0.35, color=style["color"])
            xs, ys = _common(series)
            if len(xs):
                mean, half, n = interval_curves(ys, level)
                _band(ax, xs, mean, half, n, g.label, style)
        ax.set_xlabel("tokens seen (step × total batch tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (mean over seeds, {level:.0%} interval)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return save_figure(fig, plt, path)


def plot_position_intervals(curves: Mapping[tuple[str, str], tuple], gaps: Mapping[str, tuple],
                            path: str | os.PathLike[str], level: float = LEVEL,
                            xs: Sequence[float] | None = None) -> Path | None:
    """Mean loss at each context position per (group, way) and backward − forward gaps, each with its interval
    over seeds; log position axis (position + 1, or ``xs``: the mean position + 1 of each range of binned curves)."""
    if not curves:
        return None
    plt = _pyplot()
    panels = 2 if gaps else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = list(dict.fromkeys(label for label, _ in curves))
    at = (lambda m: np.arange(1, len(m) + 1)) if xs is None else (lambda m: np.asarray(xs)[: len(m)])
    for (label, way), (mean, half, n) in curves.items():
        _band(ax, at(mean), mean, half, n, f"{label} ({way})" if way not in label else label,
              _style(labels.index(label), way))
    position_axes(ax, "mean loss (nats)", f"Loss by context position ({level:.0%} interval over seeds)")
    if gaps:
        ax = axes[0][1]
        for i, (label, (mean, half, n)) in enumerate(gaps.items()):
            _band(ax, at(mean), mean, half, n, label,
                  {"color": OTHERS[i % len(OTHERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)]})
        position_axes(ax, "backward − forward loss (nats)", "Arrow of time: backward − forward, paired by seed",
                      zero_line=True)
    return save_figure(fig, plt, path)


def grad_norm_series(group: Group, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(step, norm)`` of parameter group ``name`` from each seed's research log (positive norms only: the axis
    is logarithmic)."""
    out = []
    for run in group.runs:
        if run.h5 is None:
            continue
        data = read_h5(run.h5, "layers", [name])
        if data and name in data:
            norms = data[name].astype(np.float64)
            kept = np.isfinite(norms) & (norms > 0)  # a zero norm (zero-initialised weights at step 0): no point
            if kept.any():
                out.append((data["step"][kept].astype(np.int64), norms[kept]))
    return out


def plot_grad_norms(groups: Sequence[Group], path: str | os.PathLike[str], level: float = LEVEL) -> Path | None:
    """L2 gradient norm of each parameter group (``/layers``) over steps, one panel per parameter group, every panel
    on one step axis (a group whose norm is zero at first, such as zero-initialised weights, starts later)."""
    found = {(g.label, name): grad_norm_series(g, name) for g in groups for name in PARAM_GROUPS}
    if not any(found.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PARAM_GROUPS), figsize=(4.2 * len(PARAM_GROUPS), 4.2), squeeze=False,
                             sharex=True)
    for ax, name in zip(axes[0], PARAM_GROUPS):
        for i, g in enumerate(groups):
            series = found[(g.label, name)]
            xs, ys = _common(series)
            if len(xs):
                mean, half, n = interval_curves(ys, level)
                _band(ax, xs, mean, half, n, g.label, _style(i, g.direction))
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient L2 norm")
        ax.set_title(f"{name} parameters")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Gradient norms per parameter group (mean over seeds, {level:.0%} interval)")
    return save_figure(fig, plt, path)


def plot_gaps(rows: Sequence[dict], path: str | os.PathLike[str], level: float = LEVEL) -> Path | None:
    """Backward − forward final val bpb per comparison: mean with its interval, and each seed's difference."""
    rows = [r for r in rows if r["n"]]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.7 * len(rows)))
    for i, row in enumerate(rows):
        half = row["half"] if math.isfinite(row["half"]) else 0.0
        ax.errorbar(row["mean"], i, xerr=half, fmt="o", color="black", capsize=5,
                    label=f"mean ± {level:.0%} interval" if i == 0 else None)
        ax.scatter(list(row["values"].values()), [i] * len(row["values"]), color="#d62728", s=14, alpha=0.7,
                   label="one seed" if i == 0 else None, zorder=3)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['label']} (n={r['n']})" for r in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("backward − forward final val bpb (bits per byte)")
    ax.set_title("Direction gaps over seeds")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, plt, path)


def final_by_setting(groups: Sequence[Group], rows_key: str, columns_key: str,
                     level: float = LEVEL) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Final val bpb of each group in its own reading direction, keyed by the group's values of two settings
    (dotted config keys, e.g. ``direction.direction`` and ``data.packing``): ``(mean, half width, n)`` over seeds."""
    out = {}
    for g in groups:
        if not g.runs:
            continue
        settings = g.runs[0].settings
        missing = [k for k in (rows_key, columns_key) if k not in settings]
        if missing:
            raise AnalysisError(f"the runs of {g.label} have no setting {missing[0]}; name a dotted config key")
        key = (str(settings[rows_key]), str(settings[columns_key]))
        out[key] = t_interval(list(g.final_values(g.direction).values()), level)
    return out


def plot_final_bars(table: Mapping[tuple[str, str], tuple[float, float, int]], path: str | os.PathLike[str], *,
                    rows_label: str, columns_label: str, level: float = LEVEL) -> Path:
    """Grouped bars of :func:`final_by_setting`: one group per row value, one colour per column value, the
    interval over seeds as an error bar where n ≥ 2."""
    values = {key: mean for key, (mean, _, _) in table.items()}
    errors = {key: (mean - half, mean + half) for key, (mean, half, n) in table.items()
              if n > 1 and math.isfinite(half)}
    ends = [v for span in errors.values() for v in span] + list(values.values())
    low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
    bottom = max(0.0, math.floor(20 * (low - 0.6 * (high - low) - 1e-9)) / 20)  # a multiple of 0.05 below the bars
    seeds = sorted({n for _, _, n in table.values()})
    name = (f"{' or '.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per bar"
            + (f", {level:.0%} t-interval over seeds" if errors else "") + f" (axis from {bottom:g})")
    return plot_bars({name: values}, path, errors={name: errors}, bottom=bottom,
                     ylabel="final val bpb (bits per byte, lower is better)",
                     colours={c: OTHERS[i % len(OTHERS)] for i, c in enumerate(dict.fromkeys(c for _, c in table))},
                     title=f"Final val bpb by {rows_label} and {columns_label}")
