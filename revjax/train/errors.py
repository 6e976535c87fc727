"""The errors of training, below every training module so each may raise them without importing another."""

from __future__ import annotations

from revjax.errors import RevjaxError


class TrainingError(RevjaxError, RuntimeError):
    """The run cannot go on; the message says why and what to do."""


class BatchSplitError(TrainingError, ValueError):
    """A batch that does not split evenly into micro-batches, rows or processes."""
