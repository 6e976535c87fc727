"""``revjax sweep SWEEP.yaml [--backend local|slurm|pod] [--parallel N] [--dry-run] [--retry-failed] [--status]``.

Expands the sweep into run folders under the experiment folder, then trains what is not finished: here
(``local``), as a SLURM array job (``slurm``), or by printing (``--run``: running) the command every host of a pod
runs (``pod``). Running it again skips finished runs and resumes the others. ``--status`` only prints the table;
``SWEEP.yaml`` may also be the name of an experiment run before (``<base dir>/experiments/<name>``). ``--dry-run``
writes nothing (on SLURM only the script it would submit).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from revjax.errors import run_command
from revjax.experiments.cluster import (
    check_backend,
    pod_command,
    pod_instructions,
    run_pod_command,
    submit,
    write_slurm_script,
)
from revjax.experiments.execute import RunsFailed
from revjax.experiments.runner import describe_plan, plan, prepare, run_local
from revjax.experiments.spec import load_sweep
from revjax.experiments.table import print_table

PROG = "revjax sweep"


DESCRIPTION = __doc__.splitlines()[0].strip("`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``SWEEP.yaml [--backend local|slurm|pod] [--parallel N] [--dry-run] [--retry-failed] [--status] [--run]
    [--dir DIR]``."""
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="a sweep file, a name under configs/experiments, or the "
                                                           "name of an experiment in <base dir>/experiments")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="local")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="local: chains trained at once")
    parser.add_argument("--dry-run", action="store_true",
                        help="local: list what would run, writing nothing; slurm: write the script without "
                             "submitting it")
    parser.add_argument("--retry-failed", action="store_true", help="train failed runs again")
    parser.add_argument("--status", action="store_true", help="print the status table and exit")
    parser.add_argument("--run", action="store_true", help="pod: run the per-host command on this host")
    parser.add_argument("--dir", metavar="DIR", help="the experiment folder (default: the sweep's dir, else "
                                                     "<base_dir>/experiments/<name>)")


def sweep(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep, args.dir)
    if args.status:
        print_table(spec.runs, f"experiment {spec.name}: {spec.dir}")
        return 0
    check_backend(spec, args.backend)
    if not args.dry_run:  # a dry run writes nothing (on SLURM: only its script)
        prepare(spec)
    chains, left = plan(spec, args.retry_failed)
    return BACKENDS[args.backend](spec, chains, left, args)


def nothing_to_train(spec, chains: list, left: list) -> bool:
    """True (after saying so, or raising when runs failed earlier) when no chain is left to train."""
    if chains:
        return False
    print_table(spec.runs, f"experiment {spec.name}: {spec.dir}")
    if left:
        raise RunsFailed(f"nothing to train: {len(left)} of {len(spec.runs)} runs failed earlier (their status.json "
                         "holds the last lines of their logs); --retry-failed trains them again")
    print(f"nothing to train: all {len(spec.runs)} runs finished")
    return True


def run_on_pod(spec, chains: list, left: list, args: argparse.Namespace) -> int:
    """Print the per-host command of a pod (every host runs it), or run it here with ``--run``."""
    command = pod_command(spec, retry_failed=args.retry_failed)
    if not args.run:
        print(pod_instructions(spec, command))
        return 0
    return run_pod_command(command)


def run_on_slurm(spec, chains: list, left: list, args: argparse.Namespace) -> int:
    """Write the array job's script and submit it (``--dry-run``: print it)."""
    if nothing_to_train(spec, chains, left):
        return 0
    path = write_slurm_script(spec, chains, retry_failed=args.retry_failed)
    if args.dry_run:
        print(path.read_text(), end="")
        print(f"# wrote {path} ({len(chains)} array tasks) and nothing else (revjax sweep without --dry-run writes "
              f"the run folders and submits); not submitted (--dry-run): sbatch {shlex.quote(str(path))}",
              file=sys.stderr)
        return 0
    job = submit(path, chains)
    print(f"submitted {path} as job {job}: {len(chains)} array tasks; "
          f"follow them with revjax sweep {shlex.quote(args.sweep)} --status")
    return 0


def run_here(spec, chains: list, left: list, args: argparse.Namespace) -> int:
    """Train the chains on this machine, ``--parallel`` at once (``--dry-run``: list them)."""
    if nothing_to_train(spec, chains, left):
        return 0
    if args.dry_run:
        describe_plan(spec, chains, left)
        return 0
    return run_local(spec, chains, parallel=args.parallel, retry_failed=args.retry_failed)


# --backend NAME → what runs the planned chains: (spec, chains, runs that failed earlier, args) → exit code
BACKENDS = {"local": run_here, "slurm": run_on_slurm, "pod": run_on_pod}


def run(args: argparse.Namespace) -> int:
    """Run, plan or show the sweep ``args`` name; returns the exit code."""
    return run_command(PROG, lambda: sweep(args))


def main(argv: Sequence[str] | None = None) -> int:
    """The ``revjax sweep`` command; returns its exit code."""
    return run(build_parser().parse_args(argv))
