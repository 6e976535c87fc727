"""Sweep files: base configs + overrides + a grid and/or zipped lists + seeds + an optional chain of phases.

A sweep file is YAML::

    name: directions                 # the experiment's name (its folder: <base_dir>/experiments/<name>)
    base: [default]                  # config files or names, merged in order (a path relative to this file first)
    overrides: {training.num_iterations: 60}      # every run; dotted keys or nested mappings
    grid: {direction.direction: [forward, backward]}  # the cartesian product of these lists
    zip: {optimizer.matrix_lr: [0.02, 0.04], optimizer.embedding_lr: [0.2, 0.4]}  # varied together
    seeds: [1, 2]                    # training.seed, innermost
    chain:                           # optional phases; each starts from the previous one's run folder
      - {name: base}
      - {name: sft, overrides: {training.phase: sft}}
    dir: experiments/directions      # optional: where the run folders go
    slurm: {...}                     # optional settings of the SLURM backend (see revjax.experiments.cluster)
    pod: {...}                       # optional settings of the pod backend

It expands deterministically (grid keys in file order, the last one fastest; then the zip index; then the seeds;
then the phases) into :class:`Run` s. A run's readable name lists only what varies (``direction=backward,seed=1``,
plus ``phase=sft`` in a chain); its hash is that of its resolved config without the keys in :data:`UNHASHED`
(paths and names, which do not change what is trained) and, in a chain, with its parent's hash. Its folder is
``<experiment dir>/<name>-<hash>``, so the same cell always lands in the same folder and a rerun finds it done.
Values in a run: sweep overrides, then the phase's overrides, then the cell's grid/zip/seed values.

The file is read with :func:`revjax.yamlio.load_yaml`, like config files: a key given twice, or aliases that expand
beyond bounds, are refused. The experiment folder may hold no control character (it is written into scripts; see
:mod:`revjax.experiments.cluster` for what else a script holds).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from revjax.config import Config, ConfigError, load_config
from revjax.config_args import find_config
from revjax.errors import RevjaxError
from revjax.yamlio import load_yaml

SWEEP_KEYS = ("name", "base", "overrides", "grid", "zip", "seeds", "chain", "dir", "slurm", "pod")
PHASE_KEYS = ("name", "base", "overrides")
# Keys that name or place a run but do not change what it trains; left out of the hash.
UNHASHED = ("run_name", "base_dir", "checkpoint.dir", "tokenizer.dir", "data.dir", "tasks.cache_dir",
            "training.init_from", "logging.progress")
PATH_KEYS = ("tokenizer.dir", "data.dir", "tasks.cache_dir")
HASH_LENGTH = 8
MAX_NAME = 120
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# C0 control characters and DEL: a newline or carriage return in a value written into a script would start a new
# command line there (and end SLURM's reading of the #SBATCH lines); NUL cannot be written into one at all
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SweepError(RevjaxError):
    """A sweep file that cannot be expanded; the message names the file and the problem."""

    exit_code = 2


@dataclass(eq=False)
class Run:
    """One training run of a sweep: one cell of the grid in one phase of the chain."""

    name: str  # readable: what varies, e.g. direction=backward,seed=1
    hash: str  # of the resolved config without UNHASHED keys (and the parent's hash)
    cell: int  # index of the grid/zip/seed cell
    phase: str | None  # the chain phase's name, None without a chain
    files: tuple[str, ...]  # the config files, merged in order
    overrides: tuple[str, ...]  # key=value strings after the files: sweep, phase, cell
    varied: tuple[tuple[str, Any], ...]  # the cell's (key, value) pairs
    config: Config = field(repr=False)  # resolved, with this run's folder, name and parent filled in
    dir: Path = field(repr=False)
    parent: "Run | None" = field(default=None, repr=False)

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.hash}"

    def lineage(self) -> list["Run"]:
        """The runs this one descends from, root first, itself last."""
        chain, run = [], self
        while run is not None:
            chain.append(run)
            run = run.parent
        return chain[::-1]


@dataclass
class Sweep:
    name: str
    path: Path  # the sweep file
    dir: Path  # the experiment folder
    runs: list[Run]  # in expansion order
    chains: list[list[Run]]  # per cell, its phases in order (one run each without a chain)
    slurm: dict[str, Any]
    pod: dict[str, Any]
    raw: dict[str, Any]  # the file's content

    def run(self, folder: str) -> Run:
        return next(r for r in self.runs if r.folder == folder)


# ---- reading ------------------------------------------------------------------------------------------------


def find_sweep(name: str | Path) -> Path:
    """A sweep file as given, a name under configs/experiments (``directions`` → configs/experiments/...), or the
    name of an experiment run before: the sweep file ``<base dir>/experiments/<name>/runs.json`` names (while it is
    there), else the copy beside it."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    for candidate in (str(name), f"experiments/{name}"):
        try:
            return find_config(candidate).resolve()
        except ConfigError:
            pass
    folder = Config().base_path() / "experiments" / str(name)
    if _PLAIN.match(str(name)) and (folder / "sweep.yaml").is_file():
        try:
            original = Path(json.loads((folder / "runs.json").read_text(encoding="utf-8"))["sweep"])
        except (OSError, ValueError, KeyError, TypeError):
            original = None
        return original if original is not None and original.is_file() else (folder / "sweep.yaml").resolve()
    raise SweepError(f"sweep file '{name}' was found neither as a file, under configs/experiments/ nor as an "
                     f"experiment in {folder.parent}; give a path to a YAML sweep file")


def _fail(path: Path, message: str) -> typing.NoReturn:
    raise SweepError(f"sweep file {path}: {message}")


def _check_keys(path: Path, data: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail(path, f"{where} has an unknown key '{key}'{hint}; allowed: {', '.join(allowed)}")


def _is_section(key: str) -> bool:
    cls: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings of config sections → dotted keys; values of non-section keys are kept whole."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and _is_section(path):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _mapping(path: Path, data: dict, key: str, where: str = "") -> dict:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        _fail(path, f"{where}'{key}' must be a mapping of config keys to values, got {value!r}")
    return dict(value)


def _files(path: Path, value: Any, where: str) -> list[str]:
    names = [value] if isinstance(value, str) else (value or [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(path, f"{where} must be a config name or a list of config names or paths, got {value!r}")
    found = []
    for name in names:
        local = [path.parent / name, path.parent / f"{name}.yaml"]
        hit = next((p for p in local if p.is_file()), None)
        try:
            found.append(str((hit or find_config(name)).resolve()))
        except ConfigError:
            _fail(path, f"{where} names the config '{name}', which was found neither beside the sweep file nor "
                        "under configs/")
    return found


def _lists(path: Path, data: dict, key: str) -> dict[str, list]:
    table = flatten(_mapping(path, data, key))
    for name, values in table.items():
        if not isinstance(values, list) or not values:
            _fail(path, f"{key}.{name} must be a non-empty list of values, got {values!r}")
    return table


def override_text(key: str, value: Any) -> str:
    """``key=value`` that the config loader reads back as ``value`` (JSON is YAML; strings stay strings)."""
    return f"{key}={json.dumps(value)}"


def _label(value: Any, index: int) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    return f"v{index}"  # a list or mapping: its position in the list


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with (direction.direction → direction)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        short[key] = suffix
    return short


def _clean(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name)[:MAX_NAME]
    return name if name not in ("", ".", "..") else "run"


def _hash(config: Config, parent: Run | None) -> str:
    data = config.to_dict()
    for key in UNHASHED:
        *sections, last = key.split(".")
        owner = data
        for section in sections:
            owner = owner[section]
        owner.pop(last, None)
    payload = json.dumps({"config": data, "parent": parent.hash if parent else None}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:HASH_LENGTH]


def _place(config: Config, run_dir: Path, folder: str, parent: Run | None) -> None:
    """Fill in what depends on the run's folder, with absolute paths so every host reads the same ones."""
    config.run_name = folder
    config.base_dir = str(config.base_path().resolve())
    config.checkpoint.dir = str(run_dir)
    if parent is not None:
        config.training.init_from = str(parent.dir)
    for key in PATH_KEYS:
        section, name = key.split(".")
        owner = getattr(config, section)
        if getattr(owner, name):
            setattr(owner, name, str(config.resolve(getattr(owner, name)).resolve()))


# ---- expanding ----------------------------------------------------------------------------------------------


def _cells(path: Path, grid: dict[str, list], zipped: dict[str, list], seeds: list[int]):
    """Ordered (key, value, index) tuples per cell: grid (last key fastest), then the zip index, then the seed."""
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        _fail(path, "the lists under 'zip' must have the same length, got "
                    + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    zip_rows = range(lengths.pop()) if zipped else [None]
    grid_rows = itertools.product(*[list(enumerate(v)) for v in grid.values()])
    for combo in grid_rows:
        for z in zip_rows:
            for s, seed in enumerate(seeds or [None]):
                cell = [(k, v, i) for k, (i, v) in zip(grid, combo)]
                if z is not None:
                    cell += [(k, v[z], z) for k, v in zipped.items()]
                if seed is not None:
                    cell.append(("training.seed", seed, s))
                yield cell


def load_sweep(source: str | Path, experiment_dir: str | Path | None = None) -> Sweep:
    """Read and expand a sweep file; every problem is a :class:`SweepError` in one sentence."""
    path = find_sweep(source)
    if CONTROL.search(str(path)):
        raise SweepError(f"the sweep file's path {str(path)!r} holds a control character (a newline or the like), "
                         "which the scripts it writes cannot hold; rename the file")
    try:
        data = load_yaml(path, f"sweep file {path}", SweepError)
    except OSError as err:
        _fail(path, f"cannot be read ({err.strerror}); check its permissions")
    if not isinstance(data, dict):
        _fail(path, f"must hold a mapping of keys ({', '.join(SWEEP_KEYS)}), got {type(data).__name__}")
    _check_keys(path, data, SWEEP_KEYS, "the file")
    name = data.get("name")
    if not isinstance(name, str) or not _PLAIN.match(name):
        _fail(path, f"'name' must be a plain folder name (letters, digits, . _ -), got {name!r}")
    files = _files(path, data.get("base"), "'base'")
    overrides = flatten(_mapping(path, data, "overrides"))
    grid, zipped = _lists(path, data, "grid"), _lists(path, data, "zip")
    seeds = data.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(path, f"'seeds' must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        _fail(path, f"'seeds' lists a seed twice: {seeds}")
    varied = list(grid) + list(zipped) + (["training.seed"] if seeds else [])
    twice = sorted({k for k in varied if varied.count(k) > 1})
    if twice:
        _fail(path, f"'{twice[0]}' is varied twice (in grid, zip or seeds); vary each key in one place")
    phases = _phases(path, data.get("chain"))
    short = _short_keys(varied)
    given = experiment_dir or data.get("dir")
    if given is not None and not isinstance(given, (str, Path)):
        _fail(path, f"'dir' must be a folder path, got {given!r}")
    if given is not None and CONTROL.search(str(given)):
        key = "--dir" if experiment_dir else "'dir'"
        _fail(path, f"{key}={str(given)!r} holds a control character (a newline, carriage return, NUL or the "
                    "like), which would break the scripts the sweep writes; remove it")
    where = Path(given).expanduser() if given else None

    runs, chains, folders, hashes = [], [], {}, {}
    paths_vary = any(key in UNHASHED for key in varied)  # then equal hashes in different folders are intended
    for index, cell in enumerate(_cells(path, grid, zipped, seeds)):
        label = ",".join(f"{short[k]}={_label(v, i)}" for k, v, i in cell)
        chain: list[Run] = []
        for phase in phases:
            parent = chain[-1] if chain else None
            run_name = _clean(",".join(x for x in (label, f"phase={phase['name']}" if phase["name"] else "") if x))
            texts = tuple(override_text(k, v) for k, v in
                          [*overrides.items(), *phase["overrides"].items(), *((k, v) for k, v, _ in cell)])
            try:
                config = load_config([*files, *phase["files"]], texts)
            except ConfigError as err:
                _fail(path, f"run {run_name}: {str(err).replace('the command line (', 'the sweep (')}")
            if where is None:
                where = config.base_path() / "experiments" / name
                if CONTROL.search(str(where)):
                    _fail(path, f"the experiment folder {str(where)!r} (from base_dir) holds a control character (a "
                                "newline, NUL or the like), which would break the scripts the sweep writes; set "
                                "'dir' to a plain path")
            run_hash = _hash(config, parent)
            run_dir = where.resolve() / f"{run_name}-{run_hash}"
            twin = folders.get(run_dir.name) or (None if paths_vary else hashes.get(run_hash))
            if twin:
                _fail(path, f"runs {twin} and {run_name} train the same config (hash {run_hash}); remove the "
                            "duplicate value")
            folders[run_dir.name] = hashes[run_hash] = run_name
            try:
                _place(config, run_dir, run_dir.name, parent)
            except ValueError as err:  # a NUL in a configured path
                _fail(path, f"run {run_name}: a configured folder cannot be used ({err}); remove the NUL from it")
            run = Run(name=run_name, hash=run_hash, cell=index, phase=phase["name"], files=tuple(files + phase["files"]),
                      overrides=texts, varied=tuple((k, v) for k, v, _ in cell), config=config, dir=run_dir,
                      parent=parent)
            chain.append(run)
            runs.append(run)
        chains.append(chain)
    slurm, pod = _mapping(path, data, "slurm"), _mapping(path, data, "pod")
    return Sweep(name=name, path=path, dir=where.resolve(), runs=runs, chains=chains, slurm=slurm, pod=pod, raw=data)


def _phases(path: Path, chain: Any) -> list[dict]:
    if chain is None:
        return [{"name": None, "files": [], "overrides": {}}]
    if not isinstance(chain, list) or not chain:
        _fail(path, f"'chain' must be a non-empty list of phases ({{name, base, overrides}}), got {chain!r}")
    phases, names = [], set()
    for i, phase in enumerate(chain):
        if not isinstance(phase, dict):
            _fail(path, f"chain[{i}] must be a mapping with a name, got {phase!r}")
        _check_keys(path, phase, PHASE_KEYS, f"chain[{i}]")
        name = phase.get("name")
        if not isinstance(name, str) or not _PLAIN.match(name) or name in names:
            _fail(path, f"chain[{i}] needs a 'name' that is a plain word used once, got {name!r}")
        names.add(name)
        phases.append({"name": name, "files": _files(path, phase.get("base"), f"chain[{i}].base"),
                       "overrides": flatten(_mapping(path, phase, "overrides", f"chain[{i}]: "))})
    return phases
