"""``python -m revjax.experiments SWEEP.yaml …``: the ``revjax sweep`` command."""

import sys

from revjax.experiments.cli import main

sys.exit(main())
