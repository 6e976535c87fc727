"""``python -m revjax.train --config FILE key=value…``: train or continue a run."""

import sys

from revjax.errors import exit_on_interrupt

exit_on_interrupt("revjax.train")  # before jax and the rest load

from revjax.train.loop import run_from_args  # noqa: E402

sys.exit(run_from_args())
