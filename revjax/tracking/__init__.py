"""Trackers: where a run's metrics go. The loop calls one :meth:`Tracker.log`; backends are JSONL, wandb and the
HDF5 research log (:mod:`revjax.tracking.hdf5`).

``metrics.jsonl`` (process 0 only) holds one JSON object per line with a ``step`` key. A resumed run first cuts the
rows of steps at or after the checkpoint it continues from (they are logged again), and a torn last line (power
loss, full disk) is cut with a warning; a damaged line elsewhere stops with one sentence naming the file and line.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

from revjax.errors import RevjaxError, require


class TrackingError(RevjaxError):
    """A metrics file cannot be read or written."""


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics JSONL file; a torn last line is left out with a warning."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise TrackingError(f"cannot read the metrics log {path} ({err.strerror}); check the file") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as err:
            if number == len(lines):
                warnings.warn(f"cutting the torn last line {number} of {path}", stacklevel=2)
                break
            raise TrackingError(f"line {number} of the metrics log {path} is damaged ({err}); fix or remove that "
                                "line") from None
        rows.append(row)
    return rows


class JsonlTracker:
    """Appends rows to ``path``; opening it keeps only the rows of steps before ``start``."""

    def __init__(self, path: str | Path, start: int):
        self.path = Path(path)
        try:
            if self.path.exists():
                kept = [row for row in read_metrics(self.path) if row["step"] < start]
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
                os.replace(tmp, self.path)
            self._file = open(self.path, "a")
        except OSError as err:
            raise TrackingError(f"cannot write the metrics log {self.path} ({err.strerror})") from None

    def log(self, row: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as err:
            raise TrackingError(f"cannot write the metrics log {self.path} ({err.strerror})") from None

    def close(self) -> None:
        self._file.close()


class WandbTracker:
    def __init__(self, *, project: str, name: str, mode: str, directory: Path, config: dict):
        wandb = require("wandb", "wandb", "logging.wandb")
        self._run = wandb.init(project=project, name=name, mode=mode, dir=str(directory), config=config)

    def log(self, row: dict[str, Any]) -> None:
        self._run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self._run.finish()


class Trackers:
    """Fans one ``log`` out to several trackers.

    A row is ``scheduled`` when ``logging.log_every`` asks for it; trackers with ``every_step = True`` (the HDF5
    research log) receive every row, with its ``diagnostics`` arrays, and the others only the scheduled rows,
    without them.
    """

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, row: dict[str, Any], *, scheduled: bool = True) -> None:
        plain = {k: v for k, v in row.items() if k != "diagnostics"}
        for tracker in self.trackers:
            if getattr(tracker, "every_step", False):
                tracker.log(row)
            elif scheduled:
                tracker.log(plain)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
