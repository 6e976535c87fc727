"""``python -m revjax.train --config FILE key=value…``: train or continue a run."""

import os
import sys

try:
    from revjax.train.loop import run_from_args
except KeyboardInterrupt:  # Ctrl-C while jax and the rest load: one line, no traceback, nothing written yet
    print("revjax.train: interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # an interrupted extension import must not run interpreter teardown, which can re-raise SIGINT

sys.exit(run_from_args())
