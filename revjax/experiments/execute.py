"""Running run folders here: each as ``python -m revjax.train --config <run>/config.yaml``, with its status and log.

Every backend ends up here: the local runner calls :func:`execute_chain` from its worker threads, a SLURM array
task and every host of a pod run ``python -m revjax.experiments.execute``. A run that finished is skipped; a failed
one only runs again with ``retry_failed``; anything else (pending, interrupted, or marked running by a process that
is gone) is started, and training continues from the run's newest checkpoint. A chain stops at the first run that
does not finish. SIGTERM/SIGINT are passed on to the training processes, which save and exit; the run is then
recorded as interrupted. In a multi-host run (``REVJAX_PROCESS_ID`` > 0) only process 0 writes the status and
``log.txt``; the others log to ``log.<process id>.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

from revjax.errors import RevjaxError, run_command
from revjax.experiments.lineage import (
    CONFIG_FILE,
    LOG_FILE,
    PARENT_JSON,
    ExperimentError,
    log_tail,
    now,
    read_plan,
    read_status,
    record_evaluation,
    runner_gone,
    update_status,
)
from revjax.runlock import RunFolderLocked, RunLock

STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# a training process that ends by one of these (or exits 128 + one of them) was stopped, not broken
INTERRUPTING = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL}


class RunsFailed(RevjaxError):
    """Some runs of an experiment did not finish."""


def train_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "revjax.train", "--config", str(Path(run_dir) / CONFIG_FILE)]


class Children:
    """The training processes started here; a stop request is passed on to them and starts no new ones."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
        self._procs: set[subprocess.Popen] = set()
        self.signal: int | None = None

    @property
    def stopping(self) -> bool:
        return self.signal is not None

    def start(self, argv: Sequence[str], **kwargs) -> subprocess.Popen | None:
        with self._lock:
            if self.signal is not None:
                return None
            proc = subprocess.Popen(list(argv), **kwargs)
            self._procs.add(proc)
        if self.signal is not None:  # a stop arrived while it was starting
            proc.send_signal(self.signal)
        return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self, signum: int, _frame=None) -> None:
        self.signal = signum
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    @contextlib.contextmanager
    def catching_signals(self):
        """While inside, SIGTERM/SIGINT to this process stop the children (call from the main thread)."""
        previous = {}
        for sig in STOPPING_SIGNALS:
            with contextlib.suppress(ValueError):
                previous[sig] = signal.signal(sig, self.stop)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _signal_of(code: int) -> int | None:
    if code < 0:
        return -code
    if code - 128 in (signal.SIGTERM, signal.SIGINT):
        return code - 128
    return None


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return str(number)


def _parent_problem(run_dir: Path) -> str | None:
    link = run_dir / PARENT_JSON
    if not link.exists():
        return None
    import json

    try:
        record = json.loads(link.read_text())
        parent = Path(record["parent_checkpoint_path"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExperimentError(f"the parent link {link} cannot be read ({type(err).__name__}: {err}); delete it and "
                              "run the sweep again to write it anew") from None
    state = read_status(parent)["state"]
    if state != "finished":
        return f"its parent run {parent.name} is {state}, not finished; run the sweep again to train the parent first"
    return None


def execute_run(run_dir: str | Path, children: Children, *, env: dict | None = None, cpus: Iterable[int] | None = None,
                retry_failed: bool = False, echo: Callable[[str], None] = print) -> str:
    """Train one run folder unless it is finished (or failed, without ``retry_failed``, or in use); returns its
    state afterwards, or ``busy`` when another process is running it."""
    run_dir = Path(run_dir)
    env = dict(os.environ if env is None else env)
    process_id = int(env.get("REVJAX_PROCESS_ID") or 0)
    status = read_status(run_dir)
    state = status["state"]
    if state == "absent":
        raise ExperimentError(f"{run_dir} is not a run folder of an experiment (it has no status.json)")
    if state == "finished" or (state == "failed" and not retry_failed) or children.stopping:
        return state
    problem = _parent_problem(run_dir)
    if process_id == 0:
        if state == "running" and status.get("host") == socket.gethostname() and not runner_gone(status):
            echo(f"{run_dir.name}: skipped, process {status.get('pid')} is running it")
            return "busy"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a lock left by a dead process is taken over without a word
                RunLock(run_dir, "revjax sweep: checking the run is free").acquire().release()
        except RunFolderLocked as err:
            echo(f"{run_dir.name}: skipped, {err}")
            return "busy"
        status = update_status(run_dir, state="running", attempts=int(status.get("attempts", 0)) + 1,
                               started=now(), ended=None, exit_code=None, signal=None, tail=None,
                               host=socket.gethostname(), pid=os.getpid())
        if problem:
            update_status(run_dir, state="failed", ended=now(), tail=[problem])
            echo(f"{run_dir.name}: failed, {problem}")
            return "failed"
    elif problem:
        return "failed"
    log = run_dir / (LOG_FILE if process_id == 0 else f"log.{process_id}.txt")
    argv = train_command(run_dir)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "ab") as out:
        header = (f"\n=== attempt {status.get('attempts', '?')} · {now()} · {socket.gethostname()} "
                  f"pid {os.getpid()} · {' '.join(argv)}\n")
        out.write(header.encode())
        out.flush()
        start = out.tell()
        echo(f"{run_dir.name}: started (attempt {status.get('attempts', '?')})")
        proc = children.start(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        if proc is None:
            code = 128 + (children.signal or signal.SIGTERM)
        else:
            if cpus:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, set(cpus))
            code = proc.wait()
            children.done(proc)
    sig = _signal_of(code)
    if code == 0:
        state = "finished"
    elif sig in INTERRUPTING or children.stopping:
        state = "interrupted"
    else:
        state = "failed"
    if process_id == 0:
        fields = {"state": state, "ended": now(), "exit_code": code, "signal": _signal_name(sig)}
        if state == "finished":
            found = record_evaluation(run_dir)
            fields.update(step=max(found.get("steps_done", 0), found.get("val_step", 0)),
                          val_bpb=found.get("val_bpb"))
        else:
            fields["tail"] = log_tail(log, start)
        update_status(run_dir, **fields)
    how = f" by {_signal_name(sig)}" if state == "interrupted" and sig else ""
    echo(f"{run_dir.name}: {state}{how}" + (f" (exit code {code}; see {log})" if state == "failed" else ""))
    return state


def execute_chain(run_dirs: Sequence[str | Path], children: Children, **kwargs) -> list[str]:
    """Run the folders in order, stopping at the first that does not finish; returns the states reached."""
    states = []
    for run_dir in run_dirs:
        states.append(execute_run(run_dir, children, **kwargs))
        if states[-1] != "finished":
            break
    return states


def outcome(states: Sequence[str], children: Children, total: int) -> int:
    """The exit code of a batch of runs: 128 + the signal when stopped; RunsFailed when some did not finish."""
    if children.signal is not None:
        return 128 + children.signal
    unfinished = [s for s in states if s != "finished"]
    if unfinished:
        counts = {s: unfinished.count(s) for s in dict.fromkeys(unfinished)}
        raise RunsFailed(f"{len(unfinished)} of {total} runs did not finish ("
                         + ", ".join(f"{n} {s}" for s, n in counts.items())
                         + "); their status.json holds the last lines of their logs, --retry-failed runs failed ones "
                           "again")
    return 0


def check_hosts(hosts: int, env: dict) -> None:
    """A multi-host run needs REVJAX_COORDINATOR, REVJAX_NUM_PROCESSES (= hosts) and REVJAX_PROCESS_ID here."""
    if hosts <= 1:
        return
    missing = [k for k in ("REVJAX_COORDINATOR", "REVJAX_NUM_PROCESSES", "REVJAX_PROCESS_ID") if not env.get(k)]
    if missing:
        raise ExperimentError(f"a run over {hosts} hosts needs {', '.join(missing)} in every host's environment "
                              "(the coordinator host:port, the number of hosts, and this host's index)")
    if env["REVJAX_NUM_PROCESSES"] != str(hosts):
        raise ExperimentError(f"REVJAX_NUM_PROCESSES={env['REVJAX_NUM_PROCESSES']} differs from the {hosts} hosts "
                              "the sweep's pod settings name")


def execute_experiment(experiment_dir: str | Path, children: Children, **kwargs) -> list[str]:
    """Every chain of an experiment folder's runs.json in order, each as far as it finishes."""
    states = []
    for chain in read_plan(Path(experiment_dir)):
        if children.stopping:
            break
        reached = execute_chain(chain, children, **kwargs)
        states += reached + ["pending"] * (len(chain) - len(reached))
    return states


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m revjax.experiments.execute [--retry-failed] [--hosts N] (--experiment DIR | RUN_DIR...)``."""
    parser = argparse.ArgumentParser(prog="python -m revjax.experiments.execute",
                                     description="Train run folders of an experiment (one chain, or all of them).")
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders of one chain, in order")
    parser.add_argument("--experiment", metavar="DIR", help="every chain of this experiment folder, in order")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    parser.add_argument("--hosts", type=int, default=1, help="hosts taking part in every run (multi-host)")
    args = parser.parse_args(argv)
    if bool(args.run_dirs) == bool(args.experiment):
        parser.error("give either run folders or --experiment DIR")

    def body() -> int:
        check_hosts(args.hosts, dict(os.environ))
        children = Children()
        with children.catching_signals():
            if args.experiment:
                states = execute_experiment(args.experiment, children, retry_failed=args.retry_failed)
            else:
                states = execute_chain(args.run_dirs, children, retry_failed=args.retry_failed)
                states += ["pending"] * (len(args.run_dirs) - len(states))
        return outcome(states, children, len(states))

    return run_command("revjax sweep", body)


if __name__ == "__main__":
    sys.exit(main())
