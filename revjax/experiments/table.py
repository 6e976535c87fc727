"""The status table of an experiment's runs: a live ``rich`` table on a terminal, plain lines elsewhere."""

from __future__ import annotations

import datetime
import sys
import threading
from typing import Any, Sequence, TextIO

from revjax.experiments.lineage import last_measurements, read_status, runner_gone
from revjax.experiments.spec import Run

COLUMNS = ("run", "state", "steps", "val bpb", "tries", "time", "note")


def _seconds(status: dict[str, Any]) -> str:
    if not status.get("started"):
        return ""
    try:
        start = datetime.datetime.fromisoformat(status["started"])
        end = (datetime.datetime.fromisoformat(status["ended"]) if status.get("ended") and status["state"] != "running"
               else datetime.datetime.now(datetime.timezone.utc))
        seconds = int((end - start).total_seconds())
    except (ValueError, TypeError):  # a hand-edited time: the table still shows the rest
        return "?"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def row(run: Run) -> dict[str, str]:
    """One run's line of the table, from its status.json and metrics.jsonl."""
    status = read_status(run.dir)
    state = "not made" if status["state"] == "absent" else status["state"]
    note = ""
    if runner_gone(status):
        state, note = "stale", f"its process {status.get('pid')} has ended; the next sweep resumes it"
    elif status["state"] in ("failed", "interrupted"):
        tail = status.get("tail") or []
        note = (f"exit {status.get('exit_code')}" + (f" ({status['signal']})" if status.get("signal") else "")
                + (f": {tail[-1]}" if tail and status["state"] == "failed" else ""))
    measured = last_measurements(run.dir) if status["state"] != "absent" else {}
    total = run.config.training.num_iterations
    done = status.get("step") if status["state"] == "finished" else measured.get("steps_done", 0)
    bpb = status.get("val_bpb") if status["state"] == "finished" else measured.get("val_bpb")
    return {"run": run.folder, "state": state, "steps": f"{done or 0}/{total if total > 0 else '?'}",
            "val bpb": "" if bpb is None else f"{bpb:.4f}", "tries": str(status.get("attempts", 0)),
            "time": _seconds(status), "note": note}


def plain_table(runs: Sequence[Run]) -> str:
    rows = [dict(zip(COLUMNS, COLUMNS))] + [row(r) for r in runs]
    widths = {c: max(len(r[c]) for r in rows) for c in COLUMNS[:-1]}
    lines = ["  ".join([r[c].ljust(widths[c]) for c in COLUMNS[:-1]] + [r["note"]]).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for r in rows[1:]:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return "\n".join(lines + [", ".join(f"{n} {s}" for s, n in counts.items())])


def _rich():
    try:
        import rich.console
        import rich.live
        import rich.table
    except ImportError:
        return None
    return rich


def rich_table(runs: Sequence[Run], title: str):
    rich = _rich()
    table = rich.table.Table(title=title, expand=False)
    styles = {"finished": "green", "failed": "red", "running": "cyan", "interrupted": "yellow", "stale": "yellow"}
    for column in COLUMNS:
        table.add_column(column, no_wrap=column != "note", overflow="fold",
                         justify="right" if column in ("steps", "val bpb", "tries") else "left")
    for r in map(row, runs):
        table.add_row(*(r[c] for c in COLUMNS), style=styles.get(r["state"]))
    return table


def print_table(runs: Sequence[Run], title: str, out: TextIO | None = None) -> None:
    """The table once: rich on a terminal, aligned plain text otherwise."""
    out = out or sys.stdout
    if out.isatty() and _rich() is not None:
        _rich().console.Console(file=out).print(rich_table(runs, title))
    else:
        print(f"{title}\n{plain_table(runs)}", file=out, flush=True)


class LiveStatus:
    """While running: a live table (terminal + rich) or one line per message (otherwise)."""

    def __init__(self, runs: Sequence[Run], title: str, out: TextIO | None = None):
        self.runs, self.title, self.out = runs, title, out or sys.stdout
        self._lock = threading.Lock()
        self._live = None
        if self.out.isatty() and _rich() is not None:
            rich = _rich()
            self._live = rich.live.Live(rich_table(runs, title), console=rich.console.Console(file=self.out),
                                        refresh_per_second=2, transient=True)

    def __enter__(self) -> "LiveStatus":
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def message(self, text: str) -> None:
        with self._lock:
            if self._live is not None:
                self._live.console.print(text)
            else:
                print(text, file=self.out, flush=True)

    def refresh(self) -> None:
        if self._live is not None:
            with self._lock:
                self._live.update(rich_table(self.runs, self.title))
