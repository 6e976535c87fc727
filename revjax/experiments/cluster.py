"""Cluster backends: a SLURM array job (one array task per chain of runs) and the per-host command of a pod.

Both run ``python -m revjax.experiments.execute``, which records each run's status and log in its folder, so
``revjax sweep SWEEP.yaml --status`` reads the progress of cluster runs like that of local ones. The experiment
folder must be on a filesystem every node or host sees.

Sweep-file settings::

    slurm:                 # all optional
      job_name: directions # default: the sweep's name
      partition: gpu
      account: myproject
      qos: normal
      time: "04:00:00"
      nodes: 1             # nodes per run; above 1 every run is one jax.distributed job over them
      gpus_per_node: 8
      cpus_per_task: 16
      mem: 200G
      max_parallel: 4      # array tasks running at once (--array=0-N%4)
      port: 12000          # multi-node: coordinator port = port + SLURM_JOB_ID % 20000
      sbatch: ["--exclusive"]            # more sbatch options, as given
      setup: ["source .venv/bin/activate"]  # shell lines run first
      python: python       # default: this interpreter
      workdir: /path/to/checkout         # default: the current folder
    pod:
      hosts: 4             # hosts per run (REVJAX_NUM_PROCESSES must equal it on every host)
      setup: [...]
      python: python
      workdir: /path/to/checkout

What reaches a script, and how:

* ``python``, ``workdir``, the run folders and the experiment folder are shell words: each goes through
  ``shlex.quote``, so spaces, quotes or ``$(...)`` in them stay part of the value;
* ``job_name``, ``partition``, ``account``, ``qos``, ``time``, ``mem``, each ``sbatch`` entry and the experiment
  folder (in ``--output``) go into ``#SBATCH`` lines, which SLURM splits itself (on spaces, with its own quotes,
  backslashes and ``#`` comments) and no shell quoting protects: each must be one word without spaces, quotes,
  backslashes or ``#`` (an ``sbatch`` entry also starts with ``-``), else the sweep is refused;
* ``setup`` entries are shell lines by design — write there only what you would type yourself. Each entry is one
  line: a newline, carriage return, NUL or other control character (a tab excepted) in one is refused, so give
  each line as its own entry (in a pod command the entries are joined with ``&&``);
* a cell's values appear in a comment as JSON (control characters escaped), on one line.

No value that reaches a script may hold a control character (newline, carriage return, NUL, …): a newline would
start a command line of its own and end SLURM's reading of the ``#SBATCH`` lines. Such a value is refused in one
sentence naming its key.
"""

from __future__ import annotations

import difflib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from revjax.experiments.execute import Children
from revjax.experiments.lineage import now, update_status
from revjax.experiments.spec import CONTROL, Run, Sweep, SweepError, override_text

SLURM_KEYS = {"job_name": str, "partition": str, "account": str, "qos": str, "time": str, "nodes": int,
              "gpus_per_node": int, "cpus_per_task": int, "mem": str, "max_parallel": int, "port": int,
              "sbatch": list, "setup": (str, list), "python": str, "workdir": str}
POD_KEYS = {"hosts": int, "setup": (str, list), "python": str, "workdir": str}
SBATCH_OPTIONS = ("partition", "account", "qos", "time", "gpus_per_node", "cpus_per_task", "mem")
DEFAULT_PORT = 12000
EXECUTE = ("-m", "revjax.experiments.execute")
SBATCH_KEYS = ("job_name", *SBATCH_OPTIONS)  # the string settings written into #SBATCH lines
# one word of an #SBATCH line: SLURM splits these lines on spaces and reads quotes, backslashes and '#' itself
SBATCH_WORD = re.compile(r"""[^\s'"\\#\x00-\x1f\x7f]+""")
SETUP_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is fine in a shell line


def _settings(sweep: Sweep, section: str, allowed: dict[str, Any]) -> dict[str, Any]:
    values = getattr(sweep, section)
    for key, value in values.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            raise SweepError(f"sweep file {sweep.path}: {section}.{key} is not a setting"
                             + (f" (did you mean {section}.{close[0]}?)" if close else "")
                             + f"; settings: {', '.join(allowed)}")
        kind = allowed[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise SweepError(f"sweep file {sweep.path}: {section}.{key}={value!r} has the wrong type"
                             + ("; give a positive integer" if kind is int else ""))
        entries = [(f"{section}.{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else \
            [(f"{section}.{key}", value)]
        for name, entry in entries:
            if isinstance(entry, str) or key in ("sbatch", "setup"):
                _check_text(sweep, key, name, entry if isinstance(entry, str) else str(entry),
                            sbatch=section == "slurm" and key in (*SBATCH_KEYS, "sbatch"))
    return values


def _check_text(sweep: Sweep, key: str, name: str, text: str, *, sbatch: bool) -> None:
    """Refuse a setting's text that would break the script it is written into (see the module's notes)."""
    where = f"sweep file {sweep.path}: {name}={text!r}"
    if (SETUP_CONTROL if key == "setup" else CONTROL).search(text):
        raise SweepError(f"{where} holds a control character (a newline, carriage return, NUL or the like), which "
                         "would start a line of its own in the script; remove it"
                         + (" and give each setup line as its own list entry" if key == "setup" else ""))
    if sbatch and not SBATCH_WORD.fullmatch(text):
        raise SweepError(f"{where} must be one word without spaces, quotes, backslashes or '#': SLURM reads "
                         "'#SBATCH' lines itself and no quoting protects them")
    if key == "sbatch" and not text.startswith("-"):
        raise SweepError(f"{where} must be an sbatch option such as --exclusive or --constraint=a100")


def _lines(value: str | list | None) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in (value or [])]


def cell_overrides(run: Run) -> str:
    """The overrides that set this run's cell apart, as ``key=value`` words (what the script's comments show)."""
    return " ".join(override_text(k, v) for k, v in run.varied)


def _slurm_output(sweep: Sweep) -> str:
    output = str(sweep.dir / "slurm" / "%A_%a.out")
    if not SBATCH_WORD.fullmatch(output):
        raise SweepError(f"the experiment folder {str(sweep.dir)!r} holds a space, quote, backslash or '#', which the "
                         "script's '#SBATCH --output' line cannot hold (SLURM reads it unquoted); give the sweep a "
                         "'dir' (or --dir) without them")
    return output


def check_backend(sweep: Sweep, backend: str) -> None:
    """Refuse, before anything is written, settings of the backend that its script could not hold."""
    if backend == "slurm":
        _settings(sweep, "slurm", SLURM_KEYS)
        _slurm_output(sweep)
    elif backend == "pod":
        _settings(sweep, "pod", POD_KEYS)


def slurm_script(sweep: Sweep, chains: Sequence[Sequence[Run]], *, retry_failed: bool = False) -> str:
    """A bash array-job script; array task i trains ``chains[i]`` (each run from its config.yaml)."""
    s = _settings(sweep, "slurm", SLURM_KEYS)
    nodes = s.get("nodes", 1)
    q = shlex.quote
    output = _slurm_output(sweep)
    array = f"0-{len(chains) - 1}" + (f"%{s['max_parallel']}" if "max_parallel" in s else "")
    head = ["#!/bin/bash", f"# revjax sweep {sweep.name}, written {now()} from {sweep.path}",
            "# array task i trains the i-th chain of runs below with python -m revjax.experiments.execute",
            f"#SBATCH --job-name={s.get('job_name', sweep.name)}", f"#SBATCH --array={array}",
            f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --output={output}"]
    head += [f"#SBATCH --{key.replace('_', '-')}={s[key]}" for key in SBATCH_OPTIONS if key in s]
    head += [f"#SBATCH {option}" for option in _lines(s.get("sbatch"))]
    body = ["", "set -euo pipefail", f"cd {q(s.get('workdir', str(Path.cwd())))}", *_lines(s.get("setup")), "",
            'case "${SLURM_ARRAY_TASK_ID:?this script runs as a SLURM array job}" in']
    for i, chain in enumerate(chains):
        body.append(f"  {i})  # {cell_overrides(chain[0]) or chain[0].name}")
        body.append("    RUNS=(" + " ".join(q(str(run.dir)) for run in chain) + ")")
        body.append("    ;;")
    body += ["  *)", '    echo "array task ${SLURM_ARRAY_TASK_ID} has no runs in this sweep" >&2', "    exit 2",
             "    ;;", "esac", ""]
    python = q(s.get("python", sys.executable))
    flags = " --retry-failed" if retry_failed else ""
    if nodes == 1:
        body.append(f'exec {python} {" ".join(EXECUTE)}{flags} "${{RUNS[@]}}"')
    else:
        port = s.get("port", DEFAULT_PORT)
        body += ['# jax.distributed over the nodes: the first node coordinates, each srun task is one process',
                 'export REVJAX_COORDINATOR="$(scontrol show hostnames "$SLURM_NODELIST" | head -n 1):'
                 f'$(({port} + SLURM_JOB_ID % 20000))"',
                 'export REVJAX_NUM_PROCESSES="$SLURM_NNODES"',
                 "exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "
                 "bash -c 'export REVJAX_PROCESS_ID=\"$SLURM_PROCID\"; exec \"$@\"' revjax-task "
                 f'{python} {" ".join(EXECUTE)} --hosts {nodes}{flags} "${{RUNS[@]}}"']
    return "\n".join(head + body) + "\n"


def write_slurm_script(sweep: Sweep, chains: Sequence[Sequence[Run]], *, retry_failed: bool = False) -> Path:
    folder = sweep.dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sweep.name}.sbatch"
    path.write_text(slurm_script(sweep, chains, retry_failed=retry_failed))
    path.chmod(0o755)
    return path


def submit(path: Path, chains: Sequence[Sequence[Run]]) -> str:
    """``sbatch`` the script; records ``slurm_job`` (``<job>_<task>``) in each run's status; returns the job id."""
    try:
        done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SweepError("sbatch was not found: submit from a SLURM login node, or use --dry-run to write the "
                         f"script only (it is at {path})") from None
    except subprocess.TimeoutExpired:
        raise SweepError(f"sbatch did not answer within 120 s; the script is at {path}") from None
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SweepError(f"sbatch refused {path}: {reason}")
    job = done.stdout.strip().split(";")[0]
    for i, chain in enumerate(chains):
        for run in chain:
            update_status(run.dir, slurm_job=f"{job}_{i}")
    return job


def pod_command(sweep: Sweep, *, retry_failed: bool = False) -> str:
    """The command every host of a pod runs: all chains of the experiment, one after the other, on all hosts."""
    s = _settings(sweep, "pod", POD_KEYS)
    q = shlex.quote
    hosts = s.get("hosts", 1)
    execute = [s.get("python", sys.executable), *EXECUTE, "--experiment", str(sweep.dir)]
    execute += (["--hosts", str(hosts)] if hosts > 1 else []) + (["--retry-failed"] if retry_failed else [])
    steps = [f"cd {q(s.get('workdir', str(Path.cwd())))}", *_lines(s.get("setup")),
             "exec " + " ".join(map(q, execute))]
    return " && ".join(steps)


def pod_instructions(sweep: Sweep, command: str) -> str:
    hosts = _settings(sweep, "pod", POD_KEYS).get("hosts", 1)
    lines = [f"# experiment {sweep.name}: run this same command on every host of the pod"]
    if hosts > 1:
        lines += [f"# (e.g. gcloud compute tpus tpu-vm ssh NAME --worker=all --command={shlex.quote(command)});",
                  "# each host's environment must give REVJAX_COORDINATOR=<first host>:<port>, "
                  f"REVJAX_NUM_PROCESSES={hosts} and REVJAX_PROCESS_ID=<its index 0..{hosts - 1}>"]
    return "\n".join(lines + [command])


def run_pod_command(command: str) -> int:
    """Run the pod command on this host (one of the pod's hosts); returns its exit code."""
    children = Children()
    with children.catching_signals():
        proc = children.start(["bash", "-c", command])
        code = proc.wait() if proc is not None else 128 + (children.signal or 15)
    return code
