"""``revjax lm-eval ARGS…``: lm-evaluation-harness's own command line, with revjax runs known as ``--model revjax``.

lm-eval 0.4.13 finds models only in its own table, so this command registers :class:`revjax.interop.lm_eval.RevjaxLM`
as ``revjax`` and hands every argument, unread, to lm-eval's parser (``run`` is implied, as with ``lm-eval`` itself):

    revjax lm-eval --model revjax --model_args run=RUN_DIR,direction=backward --tasks hellaswag --limit 100

``--model_args`` of ``revjax``: ``run`` (the run folder), ``step``, ``direction`` (forward or backward, for a
bidirectional model), ``max_length``, ``batch_tokens``, ``batch_size``, ``seed``. It needs the ``lm-eval`` extra
(``pip install 'revjax[lm-eval]'``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from revjax.errors import require, run_command

DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ARGS…``: everything after ``lm-eval`` goes to lm-eval unread, options and ``--help`` included."""
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="lm-eval's own arguments (revjax lm-eval --help shows them)")
    parser.prefix_chars = ""  # nothing here is an option of this parser, so --model, -h, … reach lm-eval as given


def run_harness(argv: Sequence[str]) -> int:
    """Run lm-eval's command line on ``argv`` with the ``revjax`` model registered; returns the exit code."""
    require("lm_eval", "lm-eval", "revjax lm-eval")
    import revjax.interop.lm_eval  # noqa: F401  (registers --model revjax)
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads sys.argv (and inserts "run" when it is left out)
    try:
        setup_logging()
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    finally:
        sys.argv = saved
    return 0


def run(args: argparse.Namespace) -> int:
    """Run lm-eval with ``args.args``; a revjax error (a missing run, a direction the model does not read) is one
    sentence on stderr."""
    return run_command("revjax lm-eval", lambda: run_harness(args.args))


def main(argv: Sequence[str] | None = None) -> int:
    """``revjax lm-eval ARGS…``."""
    parser = argparse.ArgumentParser(prog="revjax lm-eval", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
