"""Wall seconds of each revjax command run with its defaults on the quickstart's default models.

Assumes ``revjax quickstart`` has run under ``REVJAX_BASE_DIR`` (default ``~/.cache/revjax``): the runs
``default-forward`` and ``default-backward`` in ``<base dir>/checkpoints``. Each command runs as its own process
(``python -m revjax.cli …``), one after another, in this order: chain, eval, compare, report, sweep (a tiny sweep
file written into a temporary folder), plot, chat -p, export, import. It prints one table row per command: wall
seconds and exit code.

    python scripts/bench_commands.py                   # every command (long: chain trains mid, SFT and RL)
    python scripts/bench_commands.py --only report     # just the named ones (repeatable)
    python scripts/bench_commands.py --list            # the commands and their argument lists
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def base_dir() -> Path:
    return Path(os.environ.get("REVJAX_BASE_DIR", "~/.cache/revjax")).expanduser()


def commands(base: Path, scratch: Path) -> dict[str, list[str]]:
    """Command name → its revjax arguments, all with their defaults."""
    runs = base / "checkpoints"
    forward, backward = runs / "default-forward", runs / "default-backward"
    sweep = scratch / "bench.yaml"
    sweep.write_text("name: bench-commands\nbase: [default]\n"
                     f"dir: {scratch / 'experiment'}\n"
                     "overrides: {training.num_iterations: 4, training.eval_every: 0, training.sample_every: 0}\n"
                     "seeds: [1]\n", encoding="utf-8")
    return {
        "chain": ["chain"],
        "eval": ["eval", str(forward)],
        "compare": ["compare", str(forward), str(backward)],
        "report": ["report", str(forward)],
        "sweep": ["sweep", str(sweep)],
        "plot": ["plot", str(scratch / "experiment")],
        "chat -p": ["chat", str(forward), "-p", "What is 12 plus 7?"],
        "export": ["export", str(forward), str(scratch / "export"), "--flat"],
        "import": ["import", str(scratch / "export"), str(scratch / "imported")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=None, metavar="COMMAND",
                        help="run only this command (repeatable; e.g. report, 'chat -p')")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    base = base_dir()
    with tempfile.TemporaryDirectory(prefix="revjax-bench-commands-") as tmp:
        table = commands(base, Path(tmp))
        unknown = sorted(set(args.only or []) - set(table))
        if unknown:
            parser.error(f"unknown command(s) {', '.join(unknown)}; choose from {', '.join(table)}")
        if args.list:
            for name, argv_ in table.items():
                print(f"{name:<8} revjax {' '.join(argv_)}")
            return 0
        if not (base / "checkpoints" / "default-forward").is_dir():
            print(f"no quickstart runs under {base}/checkpoints: run `revjax quickstart` first", file=sys.stderr)
            return 2
        rows = []
        for name, argv_ in table.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "revjax.cli", *argv_], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            rows.append((name, time.perf_counter() - start, done.returncode, done.stderr.strip().splitlines()[-1:]))
    print(f"{'command':<10} {'seconds':>8} {'exit':>5}")
    for name, seconds, code, last in rows:
        print(f"{name:<10} {seconds:>8.1f} {code:>5}" + (f"   {last[0][:100]}" if code and last else ""))
    return 0 if all(code == 0 for _, _, code, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
