"""``python -m revjax.train`` / ``revjax train``: train (or continue) the configured run.

Its arguments, ``--config FILE`` (repeatable; a bare name such as ``default`` or ``model/d20`` is looked up in
``configs/``) and ``key.sub=value`` overrides, are also those of the revjax commands that read a config
(quickstart, chain, prepare, tokenizer, config: :mod:`revjax.cli`). Nothing heavy is imported until :func:`run`, so
``python -m revjax.train`` can set its Ctrl-C handler first.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable, Sequence

from revjax.errors import run_command

if TYPE_CHECKING:
    from revjax.train.loop import RunResult

PROG = "python -m revjax.train"
DESCRIPTION = "Train (or continue) a revjax model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (repeatable, merged in order) and ``key.sub=value`` overrides."""
    parser.add_argument("--config", action="append", metavar="FILE", help="YAML config (repeatable, merged in order)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def run(args: argparse.Namespace, *, on_result: Callable[[RunResult], None] | None = None) -> int:
    """Train the run ``args`` configure; returns the exit code (128 + signal when a signal stopped it)."""
    from revjax.config_args import config_from_args
    from revjax.train.loop import exit_code, train

    outcome: list[RunResult] = []
    code = run_command("revjax.train", lambda: outcome.append(train(config_from_args(args, ["default"]))))
    if code or not outcome:
        return code
    if on_result:
        on_result(outcome[0])
    print(outcome[0].summary(), flush=True)
    return exit_code(outcome[0])


def main(argv: Sequence[str] | None = None, *, on_result: Callable[[RunResult], None] | None = None) -> int:
    """``python -m revjax.train [--config FILE]… [key.sub=value]…``; returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), on_result=on_result)
