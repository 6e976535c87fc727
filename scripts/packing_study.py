"""The packing study's table and plot: final val bpb per direction × packing of `revjax sweep packing`.

    python scripts/packing_study.py EXPERIMENT_DIR [--plot PNG] [--level 0.95]
        [--rows direction.direction] [--columns data.packing]

Prints a markdown table (one row per value of ``--rows``, one column per value of ``--columns``; mean ± the half
width of the Student-t interval over seeds where a cell has two or more, and n) and, with ``--plot``, draws it as
grouped bars with the intervals as error bars. Reads only the runs' tracking files, as ``revjax plot`` does.
"""

from __future__ import annotations

import argparse
import math
import sys

from revjax.analysis.curves import final_by_setting, plot_final_bars
from revjax.analysis.experiment import AnalysisError, read_experiment


def markdown(table: dict, rows_label: str) -> list[str]:
    rows = list(dict.fromkeys(r for r, _ in table))
    columns = list(dict.fromkeys(c for _, c in table))
    lines = [f"| {rows_label} | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            if (r, c) not in table:
                cells.append("–")
                continue
            mean, half, n = table[(r, c)]
            cells.append(f"{mean:.3f} ± {half:.3f} (n={n})" if math.isfinite(half) else f"{mean:.3f} (n={n})")
        lines.append(f"| {r} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--plot", help="the PNG to write")
    parser.add_argument("--rows", default="direction.direction")
    parser.add_argument("--columns", default="data.packing")
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        table = final_by_setting(read_experiment(args.experiment), args.rows, args.columns, args.level)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows_label, columns_label = args.rows.split(".")[-1], args.columns.split(".")[-1]
    print("\n".join(markdown(table, rows_label)))
    if args.plot:
        path = plot_final_bars(table, args.plot, rows_label=rows_label, columns_label=columns_label, level=args.level)
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
