"""``python -m revjax.train --config FILE key=value…``: train or continue a run."""

import sys

from revjax.train.loop import run_from_args

sys.exit(run_from_args())
