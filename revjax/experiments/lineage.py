"""What an experiment folder holds, and reading and writing it.

``<experiment dir>/`` holds ``sweep.yaml`` (a copy of the sweep file), ``runs.json`` (the expanded plan: the chains
of run folders, with each run's name, hash, phase and overrides) and one folder per run,
``<name>-<hash>/``:

* ``config.yaml`` — the resolved config the run trains with (``python -m revjax.train --config <run>/config.yaml``);
* ``status.json`` — ``state`` (pending, running, finished, failed, interrupted), ``attempts``, ``created``,
  ``started``, ``ended``, ``exit_code``, ``signal``, ``host``/``pid`` of the process that ran it, ``step`` and
  ``val_bpb`` when it finished, ``tail`` (the last lines of its log) when it failed;
* ``log.txt`` — the training output, every attempt appended under a header line (other hosts of a multi-host run
  write ``log.<process id>.txt``);
* the training folder itself: ``checkpoint.dir`` is the run folder, so the checkpoint steps (``<step>/``),
  ``metrics.jsonl`` and the run lock sit beside these files and a chained phase's ``training.init_from`` is simply
  its parent's run folder;
* ``evaluations/training.json`` — the last validation measured in training (step, val_bpb, val_loss);
* in a chain, ``parent`` (a relative symbolic link to the parent's run folder) and ``parent_link.json``
  (onanchat's keys ``parent_experiment_id``, ``parent_checkpoint_path``, ``parent_phase``, plus ``parent_hash`` and
  ``inheritance_chain``, the run folders from the root to the parent).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from revjax.errors import RevjaxError
from revjax.experiments.spec import Run, Sweep

STATES = ("pending", "running", "finished", "failed", "interrupted")
CONFIG_FILE, STATUS_FILE, LOG_FILE = "config.yaml", "status.json", "log.txt"
PARENT_LINK, PARENT_JSON, EVALUATIONS = "parent", "parent_link.json", "evaluations"
PLAN_FILE, SWEEP_COPY = "runs.json", "sweep.yaml"
TAIL_LINES = 20
JSON_KINDS = {"list": "list", "str": "string", "int": "number", "float": "number", "bool": "boolean",
              "NoneType": "null"}
# the types of the status fields that are read back (None is allowed for each)
STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    "attempts": (int,), "created": (str,), "started": (str,), "ended": (str,), "exit_code": (int,),
    "signal": (str,), "host": (str,), "pid": (int,), "step": (int,), "val_bpb": (int, float), "tail": (list,),
    "name": (str,), "hash": (str,), "phase": (str,), "slurm_job": (str,)}


class ExperimentError(RevjaxError):
    """An experiment folder cannot be read or written."""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise ExperimentError(f"cannot write {path} ({err.strerror}); check the folder's permissions") from None


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status; ``{"state": "absent"}`` for a run whose folder was not made yet."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return {"state": "absent", "attempts": 0}
    except (OSError, ValueError) as err:
        raise ExperimentError(f"the status file {path} cannot be read ({err}); delete it to mark the run pending")
    if not isinstance(status, dict):
        kind = JSON_KINDS.get(type(status).__name__, "value")
        raise ExperimentError(f"the status file {path} holds a JSON {kind}, not an object; delete it to mark the run "
                              "pending (the next revjax sweep writes it anew)")
    if not isinstance(status.get("state"), str) or status["state"] not in STATES:
        raise ExperimentError(f"the status file {path} has an unknown state {status.get('state')!r}; delete it to "
                              "mark the run pending")
    for key, kinds in STATUS_FIELDS.items():
        value = status.get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise ExperimentError(f"the status file {path} has {key}={value!r} of the wrong type "
                                  f"({type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}); delete it "
                                  "to mark the run pending")
    return status


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    _write_atomic(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=2) + "\n")


def update_status(run_dir: Path, **changes: Any) -> dict[str, Any]:
    status = read_status(run_dir)
    if status["state"] == "absent":
        raise ExperimentError(f"{run_dir} is not a run folder of an experiment (it has no {STATUS_FILE})")
    status.update(changes)
    write_status(run_dir, status)
    return status


def runner_gone(status: dict[str, Any]) -> bool:
    """True when a run marked running was run by a process on this host that no longer exists."""
    if status.get("state") != "running" or status.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(status.get("pid") or 0), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def make_run_folder(run: Run) -> None:
    """Create (or bring up to date) a run's folder: its config, a pending status, its parent links."""
    try:
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / EVALUATIONS).mkdir(exist_ok=True)
    except OSError as err:
        raise ExperimentError(f"cannot create the run folder {run.dir} ({err.strerror})") from None
    status = read_status(run.dir)
    config_path = run.dir / CONFIG_FILE
    text = run.config.to_yaml()
    # a finished run keeps the config it trained with; otherwise follow moved paths (they are not in the hash)
    if status["state"] != "finished" and (not config_path.exists() or config_path.read_text() != text):
        _write_atomic(config_path, text)
    if status["state"] == "absent":
        write_status(run.dir, {"state": "pending", "name": run.name, "hash": run.hash, "phase": run.phase,
                               "attempts": 0, "created": now()})
    if run.parent is not None:
        link = run.dir / PARENT_LINK
        target = os.path.relpath(run.parent.dir, run.dir)
        if not link.is_symlink() or os.readlink(link) != target:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        record = {"parent_experiment_id": run.parent.folder, "parent_checkpoint_path": str(run.parent.dir),
                  "parent_phase": run.parent.phase, "parent_hash": run.parent.hash,
                  "inheritance_chain": [r.folder for r in run.lineage()[:-1]]}
        text = json.dumps(record, indent=2) + "\n"
        if not (run.dir / PARENT_JSON).exists() or (run.dir / PARENT_JSON).read_text() != text:
            _write_atomic(run.dir / PARENT_JSON, text)


def write_plan(sweep: Sweep) -> None:
    """The experiment's own files: a copy of the sweep file and the expanded plan (runs.json)."""
    try:
        sweep.dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sweep.path, sweep.dir / SWEEP_COPY)
    except shutil.SameFileError:
        pass
    except OSError as err:
        raise ExperimentError(f"cannot write the experiment folder {sweep.dir} ({err.strerror})") from None
    plan = {"name": sweep.name, "sweep": str(sweep.path), "written": now(),
            "chains": [[r.folder for r in chain] for chain in sweep.chains],
            "runs": {r.folder: {"name": r.name, "hash": r.hash, "phase": r.phase, "cell": r.cell,
                                "parent": r.parent.folder if r.parent else None, "files": list(r.files),
                                "overrides": list(r.overrides)} for r in sweep.runs}}
    _write_atomic(sweep.dir / PLAN_FILE, json.dumps(plan, indent=2) + "\n")


def read_plan(experiment_dir: Path) -> list[list[Path]]:
    """The chains of run folders an experiment folder's runs.json lists."""
    path = Path(experiment_dir) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ExperimentError(f"{path} cannot be read ({err}); run `revjax sweep SWEEP.yaml` once to write it")
    chains = plan.get("chains") if isinstance(plan, dict) else None
    if not isinstance(chains, list) or not all(isinstance(c, list) and all(isinstance(f, str) for f in c)
                                               for c in chains):
        raise ExperimentError(f"{path} does not hold the plan's chains of run folders; delete it and run "
                              "`revjax sweep SWEEP.yaml` once to write it anew")
    return [[Path(experiment_dir) / folder for folder in chain] for chain in chains]


def log_tail(path: Path, start: int = 0, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-empty lines of a log from byte ``start`` on (progress-bar redraws count as lines)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(start, os.path.getsize(path) - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    parts = [p.rstrip() for p in re.split(r"[\r\n]+", text)]
    return [p for p in parts if p.strip()][-lines:]


def last_measurements(run_dir: Path) -> dict[str, Any]:
    """How many steps a run logged and its last validation, from its metrics.jsonl (tolerating a torn line)."""
    found: dict[str, Any] = {}
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row:
            found["steps_done"] = row["step"] + 1  # a loss row is logged for step s when s+1 steps are done
        if "val_bpb" in row:
            found["val_step"], found["val_bpb"] = row["step"], row["val_bpb"]
            found["val_loss"] = row.get("val_loss")
    return found


def record_evaluation(run_dir: Path) -> dict[str, Any]:
    """Write ``evaluations/training.json`` from the metrics log; returns the measurements."""
    found = last_measurements(run_dir)
    if "val_bpb" in found:
        record = {"step": found["val_step"], "val_bpb": found["val_bpb"], "val_loss": found.get("val_loss")}
        (Path(run_dir) / EVALUATIONS).mkdir(exist_ok=True)
        _write_atomic(Path(run_dir) / EVALUATIONS / "training.json", json.dumps(record, indent=2) + "\n")
    return found
