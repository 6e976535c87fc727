"""One base class for the errors a user can fix, and the rule every command follows when one is raised.

A :class:`RevjaxError` carries a one-sentence message saying what is wrong and what to do, and the exit code its
command ends with. Front ends catch it (and only it) through :func:`run_command`: the message goes to stderr and the
process exits non-zero without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class RevjaxError(Exception):
    """A user-fixable problem: bad input, a missing file, a mismatched checkpoint; the message says what to do."""

    exit_code = 1


class MissingDependency(RevjaxError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str, what: str):
    """Import ``module`` or raise :class:`MissingDependency` naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(
            f"{what} needs the '{module}' package, which is not installed; install it with pip install 'revjax[{extra}]'"
        ) from None


def exit_on_interrupt(prog: str) -> None:
    """Until a later handler replaces it (the training loop's, which saves), Ctrl-C prints one line and ends the
    process at once with 130: during start-up nothing is written yet, and a KeyboardInterrupt raised inside an
    import or a garbage-collection callback could otherwise be swallowed or end in a crash at interpreter teardown."""
    import os
    import signal

    def interrupted(_signum, _frame) -> None:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)


def run_command(prog: str, func: Callable[[], int | None]) -> int:
    """Run a command's body: a :class:`RevjaxError` prints ``prog: error: message`` on stderr and returns its exit
    code; Ctrl-C prints one line and returns 130; any other exception propagates with its traceback."""
    try:
        return func() or 0
    except RevjaxError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
