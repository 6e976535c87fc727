"""``python -m revjax.train --config FILE key=value…``: train or continue a run."""

import sys

from revjax.errors import exit_on_interrupt

exit_on_interrupt("revjax.train")  # before jax and the rest load

from revjax.train.command import main  # noqa: E402  (imports nothing heavy: jax loads once training starts)

sys.exit(main())
