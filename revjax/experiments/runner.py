"""Which runs of a sweep still need training, and the local backend: one chain at a time or N in parallel.

A chain (a cell's phases; one run without a ``chain:``) is the unit of work. It is to do from its first run that is
not finished, unless that run failed and failed runs are not retried. With ``--parallel N`` the local backend runs N
chains at once, each training process with its own slice of the machine: on GPUs a slice of the visible devices
(``CUDA_VISIBLE_DEVICES``), on CPUs a slice of the cores (CPU affinity and ``OMP_NUM_THREADS``-style limits), so N
processes never compete for the same threads.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
from glob import glob
from typing import Sequence, TextIO

from revjax.experiments.execute import Children, execute_chain, outcome
from revjax.experiments.lineage import make_run_folder, read_status, write_plan
from revjax.experiments.spec import Run, Sweep, SweepError
from revjax.experiments.table import LiveStatus, print_table

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def prepare(sweep: Sweep) -> None:
    """Write the experiment's files and every run folder (idempotent; finished runs are left as they are)."""
    write_plan(sweep)
    for run in sweep.runs:
        make_run_folder(run)


def plan(sweep: Sweep, retry_failed: bool = False) -> tuple[list[list[Run]], list[Run]]:
    """(the chains to run, each from its first unfinished run; the failed runs left alone)."""
    todo, left = [], []
    for chain in sweep.chains:
        for i, run in enumerate(chain):
            state = read_status(run.dir)["state"]
            if state == "finished":
                continue
            if state == "failed" and not retry_failed:
                left.append(run)
            else:
                todo.append(chain[i:])
            break
    return todo, left


def visible_gpus(env: dict | None = None) -> list[str]:
    """The GPU ids training processes would see: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if ids == ["-1"] else ids
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _split(items: Sequence, parts: int) -> list[list]:
    return [list(items[i * len(items) // parts:(i + 1) * len(items) // parts]) for i in range(parts)]


def local_slots(parallel: int, env: dict | None = None) -> list[tuple[dict, list[int] | None, str]]:
    """(environment, CPU cores or None, description) for each of ``parallel`` concurrent training processes."""
    env = dict(os.environ if env is None else env)
    if parallel < 1:
        raise SweepError(f"--parallel {parallel} must be at least 1")
    if parallel == 1:
        return [(env, None, "all devices")]
    gpus = visible_gpus(env)
    if gpus:
        if len(gpus) < parallel:
            raise SweepError(f"--parallel {parallel} needs at least {parallel} GPUs, {len(gpus)} are visible; "
                             "lower --parallel")
        return [({**env, "CUDA_VISIBLE_DEVICES": ",".join(group)}, None, f"GPUs {','.join(group)}")
                for group in _split(gpus, parallel)]
    if glob("/dev/accel*") or glob("/dev/vfio/[0-9]*"):
        raise SweepError("--parallel above 1 cannot split TPU chips between processes; use --parallel 1 (each run "
                         "then uses every chip)")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < parallel:
        raise SweepError(f"--parallel {parallel} needs at least {parallel} CPU cores, this process may use "
                         f"{len(cores)}; lower --parallel")
    slots = []
    for group in _split(cores, parallel):
        threads = {name: str(len(group)) for name in THREAD_VARIABLES}
        slots.append(({**env, **threads}, group, f"CPU cores {group[0]}-{group[-1]}"))
    return slots


def run_local(sweep: Sweep, chains: list[list[Run]], *, parallel: int = 1, retry_failed: bool = False,
              out: TextIO | None = None) -> int:
    """Train the chains here, ``parallel`` at a time, showing a status table; returns the exit code."""
    out = out or sys.stdout
    slots = local_slots(min(parallel, max(1, len(chains))))
    work: queue.Queue = queue.Queue()
    for chain in chains:
        work.put(chain)
    children = Children()
    runs = [r for chain in chains for r in chain]
    with LiveStatus(sweep.runs, f"experiment {sweep.name}: {sweep.dir}", out) as live:

        def worker(env: dict, cores: list[int] | None) -> None:
            while not children.stopping:
                try:
                    chain = work.get_nowait()
                except queue.Empty:
                    return
                execute_chain([r.dir for r in chain], children, env=env, cpus=cores, retry_failed=retry_failed,
                              echo=live.message)

        threads = [threading.Thread(target=worker, args=(env, cores), daemon=True) for env, cores, _ in slots]
        if len(slots) > 1:
            live.message(f"{len(chains)} chains ({len(runs)} runs), {len(slots)} at a time on "
                         + "; ".join(desc for _, _, desc in slots))
        with children.catching_signals():
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=0.5)
                live.refresh()
    print_table(sweep.runs, f"experiment {sweep.name}: {sweep.dir}", out)
    return outcome([read_status(r.dir)["state"] for r in sweep.runs], children, len(sweep.runs))


def describe_plan(sweep: Sweep, chains: list[list[Run]], left: list[Run], out: TextIO | None = None) -> None:
    """What a local run would do (``--dry-run``)."""
    out = out or sys.stdout
    from revjax.experiments.execute import train_command

    print(f"experiment {sweep.name} in {sweep.dir}: {len(sweep.runs)} runs, "
          f"{sum(map(len, chains))} to train in {len(chains)} chains", file=out)
    for chain in chains:
        for run in chain:
            print(f"  {run.folder}  ({read_status(run.dir)['state']})\n    {shlex.join(train_command(run.dir))}",
                  file=out)
    for run in left:
        print(f"  {run.folder}  (failed; --retry-failed runs it again)", file=out)
