"""``revjax plot EXPERIMENT_DIR [--out DIR] [--compare DIR_OR_JSON]…``: the plots and report of an experiment.

Reads only the tracking files of the experiment's run folders (see :mod:`revjax.analysis.experiment`) and writes,
into ``--out`` (default ``<experiment>/analysis/``): ``learning_curves.png`` (training loss and val bpb against
tokens seen), ``loss_by_position.png`` (the arrow-of-time curve and its backward − forward gap, from the research
logs or a ``revjax compare`` output), ``grad_norms.png`` (per parameter group, from the research logs),
``direction_gaps.png`` (backward − forward final val bpb), each when its data is there, and ``report.md`` /
``report.html`` with the tables: the runs, final val bpb per group and reading direction (mean ± 95% t-interval over
seeds, n, each seed's value), the direction gaps, and the loss at a few context positions.
"""

from __future__ import annotations

import argparse
import datetime
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from revjax.analysis.experiment import (LEVEL, AnalysisError, Group, gap_table, position_bins, position_intervals,
                                        read_experiment, summary_table)
from revjax.errors import run_command

PLOTS = ("learning_curves", "loss_by_position", "grad_norms", "direction_gaps")


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _interval(mean: float, half: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def _seeds(values: dict) -> str:
    return ", ".join(f"{s}: {v:.4f}" for s, v in values.items()) or "—"


def format_markdown(name: str, source: Path, groups: Sequence[Group], plots: dict[str, str],
                    level: float = LEVEL) -> str:
    import revjax

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs = sum(len(g.runs) for g in groups)
    others = sum(len(g.unfinished) for g in groups)
    left_out = f"; unfinished runs, listed but left out of the numbers: {others}" if others else ""
    pct = f"{level:.0%}"
    lines = [f"# Experiment report: {name}", "",
             f"Generated {stamp} by revjax {revjax.__version__} from {runs} finished runs in {len(groups)} groups "
             f"in `{source}`{left_out}. A group is the runs whose settings differ only by seed; ± is the half width "
             f"of the two-sided {pct} Student-t interval over its seeds (mean ± t·s/√n).", "",
             "## Runs", "", "| group | seed | state | steps | final train loss | final val bpb | research log | run |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for g in groups:
        for r in g.runs + g.unfinished:
            steps = max((row["step"] + 1 for row in r.rows if "loss" in row), default=None)
            lines.append(f"| {g.label} | {_num(r.seed)} | {r.status.get('state', '—')} | {_num(steps)} | "
                         f"{_num(r.final('loss'))} | {_num(r.final('val_bpb'))} | {'yes' if r.h5 else 'no'} | "
                         f"{r.dir.name} |")
    lines += ["", f"## Final val bpb ({pct} interval over seeds)", "",
              "| group | direction | read | n | mean ± half width | interval | by seed |",
              "|---|---|---|---:|---:|---|---|"]
    for row in summary_table(groups, level):
        lo_hi = (f"[{row['mean'] - row['half']:.4f}, {row['mean'] + row['half']:.4f}]"
                 if math.isfinite(row["half"]) else "—")
        lines.append(f"| {row['group']} | {row['direction']} | {row['way']} | {row['n']} | "
                     f"{_interval(row['mean'], row['half'])} | {lo_hi} | {_seeds(row['values'])} |")
    gaps = gap_table(groups, level)
    lines += ["", f"## Direction gaps: backward − forward final val bpb ({pct} interval, paired by seed)", ""]
    if gaps:
        lines += ["| comparison | kind | n | mean ± half width | interval | by seed |", "|---|---|---:|---:|---|---|"]
        for row in gaps:
            lo_hi = (f"[{row['mean'] - row['half']:.4f}, {row['mean'] + row['half']:.4f}]"
                     if math.isfinite(row["half"]) else "—")
            lines.append(f"| {row['label']} | {row['kind']} | {row['n']} | {_interval(row['mean'], row['half'])} | "
                         f"{lo_hi} | {_seeds(row['values'])} |")
    else:
        lines.append("No pair of groups differing only by direction, and no bidirectional group measured both ways.")
    length = position_length(groups)
    if length:
        bins = position_bins(length, 1)
        curves, position_gaps = position_intervals(groups, level, bins)
        lines += ["", f"## Loss by context position (nats, {pct} interval over seeds)", "",
                  "Each run's loss averaged over the positions of a range, then the interval over seeds.", "",
                  "| curve | n | " + " | ".join(f"pos {a}" if b == a + 1 else f"pos {a}–{b - 1}" for a, b in bins)
                  + " |", "|---|---:|" + "---:|" * len(bins)]
        table = {f"{label} ({way})" if way not in label else label: c for (label, way), c in curves.items()}
        table.update({f"gap: {label}": c for label, c in position_gaps.items()})
        for label, (mean, half, n) in table.items():
            cells = [_interval(float(m), float(h), 3) for m, h in zip(mean, half)]
            lines.append(f"| {label} | {int(np.max(n))} | " + " | ".join(cells) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{key.replace('_', ' ')}]({file})" for key, file in plots.items()]
    return "\n".join(lines) + "\n"


def position_length(groups: Sequence[Group]) -> int:
    """The longest loss-by-position curve of the groups' runs (0: none recorded)."""
    return max((len(c) for g in groups for r in g.runs for c in r.position.values()), default=0)


def make_plots(groups: Sequence[Group], out: Path, level: float = LEVEL) -> dict[str, str]:
    """The PNG plots that have data, as ``{name: file name}``."""
    from revjax.analysis.curves import plot_gaps, plot_grad_norms, plot_learning_curves, plot_position_intervals

    length = position_length(groups)
    bins = position_bins(length, 8) if length > 64 else None  # long curves: 8 log-spaced ranges per octave
    xs = None if bins is None else [(a + 1 + b) / 2 for a, b in bins]  # each range's mean position + 1
    curves, gaps = position_intervals(groups, level, bins)
    made = {"learning_curves": plot_learning_curves(groups, out / "learning_curves.png", level),
            "loss_by_position": plot_position_intervals(curves, gaps, out / "loss_by_position.png", level, xs),
            "grad_norms": plot_grad_norms(groups, out / "grad_norms.png", level),
            "direction_gaps": plot_gaps(gap_table(groups, level), out / "direction_gaps.png", level)}
    return {key: path.name for key, path in made.items() if path is not None}


def analyse(experiment_dir: str | Path, out: str | Path | None = None, compare: Sequence[str | Path] = (),
            level: float = LEVEL) -> Path:
    """Write the plots, ``report.md`` and ``report.html`` of an experiment folder; returns the output folder."""
    from revjax.analysis.report import to_html

    if not 0 < level < 1:
        raise AnalysisError(f"the confidence level must lie between 0 and 1, got {level}")
    source = Path(experiment_dir).expanduser().resolve()
    groups = read_experiment(source, compare)
    target = Path(out).expanduser() if out else source / "analysis"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AnalysisError(f"cannot create the output folder {target} ({err.strerror})") from None
    plots = make_plots(groups, target, level)
    markdown = format_markdown(source.name, source, groups, plots, level)
    (target / "report.md").write_text(markdown, encoding="utf-8")
    (target / "report.html").write_text(to_html(markdown, f"revjax experiment report: {source.name}"),
                                        encoding="utf-8")
    return target


DESCRIPTION = ("The PNG plots and the report (markdown and HTML) of an experiment folder, with means and t-intervals "
               "over seeds.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``EXPERIMENT_DIR [--out DIR] [--compare DIR_OR_JSON]… [--level 0.95]``."""
    parser.add_argument("experiment", metavar="EXPERIMENT_DIR",
                        help="an experiment folder (<base_dir>/experiments/<name>, one subfolder per run)")
    parser.add_argument("--out", default=None, help="output folder (default: analysis/ inside the experiment)")
    parser.add_argument("--compare", action="append", default=[], metavar="DIR_OR_JSON",
                        help="a `revjax compare` output whose per-position losses replace the research logs' for "
                             "the runs it measured (repeatable)")
    parser.add_argument("--level", type=float, default=LEVEL, help="confidence level of the intervals (0.95)")


def run(args: argparse.Namespace) -> int:
    """Write and print the plots and report of the experiment ``args`` name; returns the exit code."""

    def body() -> int:
        target = analyse(args.experiment, args.out, args.compare, args.level)
        print((target / "report.md").read_text(encoding="utf-8"))
        print(f"wrote report.md, report.html and the plots to {target}")
        return 0

    return run_command("revjax plot", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax plot EXPERIMENT_DIR [--out DIR] [--compare DIR_OR_JSON]… [--level 0.95]``."""
    parser = argparse.ArgumentParser(prog="revjax plot", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
