"""Experiments and sweeps: a sweep file expands into run folders (named by what varies plus a hash of the resolved
config), trained here, on SLURM or on a pod, with status, logs and lineage in each folder.

``spec`` reads and expands sweep files · ``lineage`` the experiment folder's files · ``execute`` trains run folders
· ``runner`` plans and runs locally · ``cluster`` SLURM and pods · ``table`` the status table · ``cli`` the
``revjax sweep`` command (:func:`main`).
"""

from __future__ import annotations

from typing import Sequence

from revjax.experiments.spec import Run, Sweep, SweepError, load_sweep

__all__ = ["Run", "Sweep", "SweepError", "load_sweep", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax sweep SWEEP.yaml [--backend local|slurm|pod] [--parallel N] [--dry-run] [--retry-failed]
    [--status]``; returns the exit code (imported lazily so ``python -m revjax.experiments.execute`` stays clean)."""
    from revjax.experiments.cli import main as sweep_main

    return sweep_main(argv)
