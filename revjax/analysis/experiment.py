"""Reading an experiment folder's tracking files and the numbers of its analysis (``revjax plot``).

Only the files the runs wrote are read: each run folder's ``config.yaml`` (its settings), ``status.json`` (its name
and state), ``metrics.jsonl`` (training loss every logged step, val bpb at each evaluation) and, when the run had
``logging.hdf5`` on, ``research.h5`` (loss by context position from ``/tokens``, gradient norms per parameter group
from ``/layers``; schema in :mod:`revjax.tracking.hdf5`). Optionally a ``revjax compare`` output (``compare.json``)
whose models are runs of the experiment gives their loss by position measured on the same validation documents.

Runs whose settings differ only by ``training.seed`` (and by paths and names, which do not change what is trained)
form a *group*; a group's numbers are means over its seeds with two-sided Student-t confidence intervals
(``mean ± t(1 − α/2, n − 1) · s / √n``, ``s`` the sample standard deviation). Two groups that differ only by
``direction.direction`` (forward and backward) make a *direction gap*: backward − forward, paired by seed. A
bidirectional group also has its own gap: its val bpb reading backward − reading forward (``val_bpb/<way>`` of the
in-training suite hook), per seed. Only finished runs (and folders without a ``status.json``) enter the numbers;
the others are listed.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from revjax.errors import RevjaxError
from revjax.yamlio import load_yaml

LEVEL = 0.95
JSON_KINDS = {"list": "list", "str": "string", "int": "number", "float": "number", "bool": "boolean",
              "NoneType": "null"}
TAIL = 0.25  # a run's loss-by-position curve: the /tokens rows of the last quarter of its logged steps
SEED_KEY, DIRECTION_KEY = "training.seed", "direction.direction"


class AnalysisError(RevjaxError):
    """An experiment folder cannot be analysed (no runs, unreadable tracking files)."""


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int]:
    """``(mean, half width, n)`` of the two-sided Student-t interval; the half width is NaN for fewer than 2
    values, and the mean NaN for none."""
    from scipy.stats import t

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    n = len(data)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(data[0]), math.nan, 1
    half = float(t.ppf(0.5 + level / 2, n - 1) * data.std(ddof=1) / math.sqrt(n))
    return float(data.mean()), half, n


def interval_curves(curves: Sequence[np.ndarray], level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position by position over equal-length curves (NaN = missing): ``(mean, half width, n)`` arrays."""
    from scipy.stats import t

    stack = np.asarray(curves, np.float64)
    n = np.isfinite(stack).sum(axis=0)
    stack = np.where(np.isfinite(stack), stack, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # positions no run scored stay NaN
        mean = np.nanmean(stack, axis=0)
        std = np.nanstd(stack, axis=0, ddof=1)
        half = np.where(n > 1, t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * std / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, half, n


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class RunData:
    """What one run folder recorded."""

    dir: Path
    settings: dict[str, Any]  # config.yaml, flattened to dotted keys
    status: dict[str, Any]
    rows: list[dict]
    h5: Path | None
    position: dict[str, np.ndarray] = field(default_factory=dict)  # way → loss by context position (nats)

    @property
    def seed(self) -> int | None:
        return self.settings.get(SEED_KEY)

    @property
    def direction(self) -> str:
        return str(self.settings.get(DIRECTION_KEY) or "forward")

    @property
    def finished(self) -> bool:
        return self.status.get("state", "finished") == "finished"

    @property
    def batch_tokens(self) -> int:
        return int(self.settings.get("training.total_batch_tokens") or 0)

    @property
    def name(self) -> str:
        return str(self.status.get("name") or self.dir.name)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens seen, value)`` of ``key`` in metrics.jsonl: a training row of step s is logged after s + 1
        steps, an evaluation at step s after s steps."""
        rows = [r for r in self.rows if isinstance(r.get(key), (int, float))]
        done = 1 if key == "loss" else 0
        return (np.asarray([(r["step"] + done) * self.batch_tokens for r in rows], np.int64),
                np.asarray([r[key] for r in rows], np.float64))

    def final(self, key: str) -> float | None:
        """The last logged value of ``key`` (``val_bpb``, ``val_bpb/backward``, ...)."""
        for row in reversed(self.rows):
            if isinstance(row.get(key), (int, float)):
                return float(row[key])
        return None

    def group_key(self) -> str:
        from revjax.experiments.spec import UNHASHED

        kept = {k: v for k, v in self.settings.items() if k not in UNHASHED and k != SEED_KEY}
        return json.dumps(kept, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs that differ only by seed."""

    label: str
    key: str
    runs: list[RunData]  # the finished ones (and hand-made folders without a status), which the statistics use
    unfinished: list[RunData] = field(default_factory=list)  # pending, running, failed or interrupted: listed only

    @property
    def direction(self) -> str:
        return (self.runs or self.unfinished)[0].direction

    @property
    def ways(self) -> list[str]:
        """The reading directions its val bpb was measured in: its own, and forward/backward when bidirectional."""
        found = [w for w in ("forward", "backward") if any(r.final(f"val_bpb/{w}") is not None for r in self.runs)]
        return [self.direction] + found if self.direction == "bidirectional" else [self.direction]

    def final_values(self, way: str) -> dict[int | None, float]:
        key = "val_bpb" if way == self.direction else f"val_bpb/{way}"
        values = {r.seed: r.final(key) for r in self.runs}
        return {s: v for s, v in values.items() if v is not None}


def read_run(run_dir: Path) -> RunData:
    from revjax.tracking import TrackingError, read_metrics

    config_path, status_path = run_dir / "config.yaml", run_dir / "status.json"
    try:
        config = load_yaml(config_path, f"the run's config file {config_path}", AnalysisError) or {}
    except OSError as err:
        raise AnalysisError(f"the run folder {run_dir} cannot be read ({err}); fix or remove it") from None
    try:
        status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    except (OSError, ValueError) as err:
        raise AnalysisError(f"the status file {status_path} cannot be read ({err}); delete it (run the sweep again "
                            "to write it anew) or remove the run folder") from None
    if not isinstance(config, dict):
        raise AnalysisError(f"the run's config file {config_path} holds a {type(config).__name__}, not a mapping of "
                            "settings; fix it or remove the run folder")
    if not isinstance(status, dict):
        kind = JSON_KINDS.get(type(status).__name__, "value")
        raise AnalysisError(f"the status file {status_path} holds a JSON {kind}, not an object; delete it (run the "
                            "sweep again to write it anew) or remove the run folder")
    settings = _flat(config)
    metrics = run_dir / "metrics.jsonl"
    try:
        rows = read_metrics(metrics) if metrics.is_file() else []
    except TrackingError as err:
        raise AnalysisError(str(err)) from None
    h5 = run_dir / "research.h5"
    return RunData(run_dir, settings, status, rows, h5 if h5.is_file() else None)


def read_h5(path: Path, group: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The datasets of one group of a research log (``step`` included); empty when the group is absent."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            if group not in f or "step" not in f[group]:
                return {}
            names = ["step", *(columns or [k for k in f[group] if k != "step"])]
            return {k: f[group][k][...] for k in names if k in f[group]}
    except OSError as err:
        raise AnalysisError(f"the research log {path} cannot be read ({err}); move it away to analyse the rest")


def run_position_curve(path: Path, tail: float = TAIL) -> np.ndarray | None:
    """Mean loss at each context position over the ``/tokens`` rows of the last ``tail`` of the logged steps,
    weighted by the scored tokens at each position; NaN where none was scored."""
    data = read_h5(path, "tokens", ["loss_by_position", "count_by_position"])
    if not data or len(data["step"]) == 0:
        return None
    steps = data["step"]
    cut = steps.max() - tail * (steps.max() - steps.min())
    keep = steps >= cut
    loss, count = data["loss_by_position"][keep].astype(np.float64), data["count_by_position"][keep]
    count = np.where(np.isfinite(loss) & (count > 0), count, 0)
    total = count.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(loss) * count).sum(axis=0) / np.maximum(total, 1), np.nan)


def add_compare(runs: Sequence[RunData], compare_json: Path) -> int:
    """Use the per-position losses of a ``revjax compare`` output for the runs it measured; returns how many."""
    try:
        models = json.loads(Path(compare_json).read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AnalysisError(f"{compare_json} is not a readable compare.json of `revjax compare` ({err})") from None
    by_dir = {r.dir.resolve(): r for r in runs}
    used = 0
    for model in models:
        run = by_dir.get(Path(model.get("run_dir", "")).resolve())
        if run is None:
            continue
        run.position = {way: np.asarray([np.nan if v is None else v for v in part["per_position"]], np.float64)
                        for way, part in model["ways"].items()}
        used += 1
    return used


def read_experiment(path: str | Path, compare: Sequence[str | Path] = ()) -> list[Group]:
    """The groups of an experiment folder's runs, in the order of its runs.json (else by folder name)."""
    from revjax.experiments.spec import _short_keys

    root = Path(path).expanduser()
    if not root.is_dir():
        raise AnalysisError(f"{path} is not a folder; pass an experiment folder (<base_dir>/experiments/<name>)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    plan = root / "runs.json"
    if plan.is_file():
        try:
            order = [f for chain in json.loads(plan.read_text())["chains"] for f in chain]
            folders.sort(key=lambda p: order.index(p.name) if p.name in order else len(order))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    runs = [read_run(p) for p in folders]
    runs = [r for r in runs if r.rows or r.h5]
    if not runs:
        raise AnalysisError(f"{path} holds no run folder with a metrics.jsonl or research.h5; train the experiment "
                            "first (revjax sweep SWEEP.yaml)")
    for run in runs:
        if run.h5 is not None:
            curve = run_position_curve(run.h5)
            if curve is not None:
                run.position = {run.direction: curve}
    for item in compare:
        add_compare(runs, Path(item) / "compare.json" if Path(item).is_dir() else Path(item))
    keyed: dict[str, list[RunData]] = {}
    for run in runs:
        keyed.setdefault(run.group_key(), []).append(run)
    settings = [json.loads(k) for k in keyed]
    varying = [k for k in dict.fromkeys(k for s in settings for k in s)
               if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    short = _short_keys(varying)
    groups = []
    for key, members in keyed.items():
        values = json.loads(key)
        label = ",".join(f"{short[k]}={values.get(k)}" for k in varying) or members[0].direction
        members = sorted(members, key=lambda r: (r.seed is None, r.seed or 0))
        done = [r for r in members if r.finished]
        groups.append(Group(label, key, done, [r for r in members if not r.finished]))
    return groups


def _without_direction(group: Group) -> str:
    values = json.loads(group.key)
    values.pop(DIRECTION_KEY, None)
    return json.dumps(values, sort_keys=True)


def direction_pairs(groups: Sequence[Group]) -> list[tuple[Group, Group]]:
    """(forward group, backward group) pairs that differ only by direction."""
    forward = {_without_direction(g): g for g in groups if g.direction == "forward"}
    return [(forward[_without_direction(g)], g) for g in groups
            if g.direction == "backward" and _without_direction(g) in forward]


def summary_table(groups: Sequence[Group], level: float = LEVEL) -> list[dict[str, Any]]:
    """Final val bpb per group and reading direction: mean, interval half width, n and the values by seed."""
    rows = []
    for g in groups:
        for way in g.ways:
            values = g.final_values(way)
            mean, half, n = t_interval(list(values.values()), level)
            rows.append({"group": g.label, "direction": g.direction, "way": way, "mean": mean, "half": half, "n": n,
                         "values": values})
    return rows


def gap_table(groups: Sequence[Group], level: float = LEVEL) -> list[dict[str, Any]]:
    """Backward − forward val bpb: across forward/backward group pairs (paired by seed) and within bidirectional
    groups (the two reading directions of each seed's model)."""
    out = []
    for fwd, bwd in direction_pairs(groups):
        f, b = fwd.final_values("forward"), bwd.final_values("backward")
        diffs = {s: b[s] - f[s] for s in f if s in b}
        mean, half, n = t_interval(list(diffs.values()), level)
        out.append({"label": f"{bwd.label} − {fwd.label}", "kind": "between models", "mean": mean, "half": half,
                    "n": n, "values": diffs})
    for g in groups:
        if g.direction == "bidirectional" and {"forward", "backward"} <= set(g.ways):
            f, b = g.final_values("forward"), g.final_values("backward")
            diffs = {s: b[s] - f[s] for s in f if s in b}
            mean, half, n = t_interval(list(diffs.values()), level)
            out.append({"label": f"{g.label}: backward − forward", "kind": "one bidirectional model", "mean": mean,
                        "half": half, "n": n, "values": diffs})
    return out


def position_bins(length: int, per_octave: int) -> list[tuple[int, int]]:
    """Log-spaced ranges ``[a, b)`` of context positions covering ``0 … length−1``: ``per_octave`` ranges per
    doubling of position + 1 (with 1: positions 0, 1–2, 3–6, 7–14, …), none empty."""
    edges, k = {1, length + 1}, 0
    while 2 ** (k / per_octave) < length + 1:
        edges.add(round(2 ** (k / per_octave)))
        k += 1
    edges = sorted(edges)
    return [(lo - 1, hi - 1) for lo, hi in zip(edges, edges[1:])]


def _binned(curve: np.ndarray, bins: Sequence[tuple[int, int]] | None) -> np.ndarray:
    if bins is None:
        return curve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a range with no scored position stays NaN
        return np.asarray([np.nanmean(curve[a:b]) if a < len(curve) else np.nan for a, b in bins])


def position_intervals(groups: Sequence[Group], level: float = LEVEL,
                       bins: Sequence[tuple[int, int]] | None = None) -> tuple[dict, dict]:
    """``curves[(group label, way)]`` and ``gaps[label]`` (backward − forward, paired by seed) as
    ``(mean, half width, n)`` arrays per context position, or per range of :func:`position_bins` (each run's curve
    is averaged over a range's positions first, then the interval is taken over seeds)."""
    curves = {}
    for g in groups:
        ways = list(dict.fromkeys(w for r in g.runs for w in r.position))
        for way in ways:
            members = [r.position[way] for r in g.runs if way in r.position]
            width = min(len(c) for c in members)
            curves[(g.label, way)] = interval_curves([_binned(c[:width], bins) for c in members], level)
    gaps = {}
    for fwd, bwd in direction_pairs(groups):
        f = {r.seed: r.position["forward"] for r in fwd.runs if "forward" in r.position}
        b = {r.seed: r.position["backward"] for r in bwd.runs if "backward" in r.position}
        seeds = [s for s in f if s in b]
        if seeds:
            width = min(min(len(f[s]), len(b[s])) for s in seeds)
            gaps[f"{bwd.label} − {fwd.label}"] = interval_curves(
                [_binned(b[s][:width] - f[s][:width], bins) for s in seeds], level)
    for g in groups:
        seeded = [r for r in g.runs if {"forward", "backward"} <= set(r.position)]
        if seeded:
            width = min(min(len(r.position["forward"]), len(r.position["backward"])) for r in seeded)
            gaps[f"{g.label}: backward − forward"] = interval_curves(
                [_binned(r.position["backward"][:width] - r.position["forward"][:width], bins) for r in seeded], level)
    return curves, gaps
