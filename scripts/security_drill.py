"""Security drill: each way data could be destroyed or an attacker let in, tried at tiny size, with the verdict
"let in".

Usage: python scripts/security_drill.py [--only CASE …]

Each case plays a careless user or an attacker against one surface — the code grader's sandbox, the server, the
scripts a sweep writes, the loaders of configs and checkpoints — and checks what happened. It prints one table row
per case: what happened, and whether the attacker was let in (it must say "no" everywhere).
``tests/test_security.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Outcome:
    case: str
    happened: str
    let_in: bool


Case = Callable[[Path], Outcome]  # a case gets a fresh empty work folder of its own


# ------------------------------------------------------------------------------------------ the code sandbox


# ------------------------------------------------------------------------------------------ the server


# ------------------------------------------------------------------------------------------ scripts and loaders


# ------------------------------------------------------------------------------------------ sizes


# ------------------------------------------------------------------------------------------ folders replaced


CASES: dict[str, Case] = {
    # sandbox

    # server

    # scripts and loaders

    # sizes

    # folders replaced

}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="run only these cases")
    args = parser.parse_args(argv)
    outcomes = []
    for name in args.only or CASES:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"revjax-security-{name}-") as work:
            try:
                outcome = CASES[name](Path(work))
            except Exception as err:  # a case that cannot even run is reported, not hidden
                outcome = Outcome(name, f"drill error: {type(err).__name__}: {str(err)[:160]}", let_in=True)
        outcomes.append(outcome)
        print(f"{outcome.case:<48} | {'yes' if outcome.let_in else 'no':<3} | {time.time() - started:5.1f}s | "
              f"{outcome.happened}", flush=True)
    print("\n| case | what happened | let in |\n|---|---|---|")
    for o in outcomes:
        print(f"| {o.case} | {o.happened} | {'**yes**' if o.let_in else 'no'} |")
    return 1 if any(o.let_in for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
