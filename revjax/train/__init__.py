"""Training: the sharded train step, the host loop and ``python -m revjax.train``."""
