"""``python -m revjax.train --config FILE key=value…``: train or continue a run."""

import sys

try:
    from revjax.train.loop import run_from_args
except KeyboardInterrupt:  # Ctrl-C while jax and the rest load: one line, no traceback
    print("revjax.train: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(run_from_args())
