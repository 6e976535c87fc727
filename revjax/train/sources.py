"""The data sources a phase row names (``Phase.data``): how each builds its training batches, which evaluation
hook it runs, and whether it reads a task mixture whose epoch sets the step count. A new source is one
:func:`register_data_source` call; a phase that reads an existing source needs none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from revjax import sharding as shd
from revjax.train.data import StepBatches, conversation_source, epoch_steps, row_batches
from revjax.train.hooks import Hook, eval_hook, rl_eval_hook


def _row_step_batches(run) -> StepBatches:
    rows = row_batches(run.config, run.phase, run.tokenizer, "train", run.local_rows, source=run.train_source)
    return StepBatches(rows, run.accum, shd.step_batch_sharding(run.mesh))


def _rollouts(run) -> Any:
    from revjax.train.rl import RolloutBatches

    return RolloutBatches(run)


@dataclass(frozen=True)
class DataSource:
    batches: Callable[[Any], Any]  # RunSetup → training batches (next(), get_state/set_state, close)
    evaluation: Callable[[Any], Hook]  # RunSetup → the phase's evaluation hook
    mixture: bool = False  # reads tasks.train (one epoch of it sets the step count when num_iterations is -1)
    samples_params: bool = False  # the batches sample from the current parameters (the loop binds them)


DATA_SOURCES: dict[str, DataSource] = {
    "documents": DataSource(_row_step_batches, eval_hook),
    "conversations-packed": DataSource(_row_step_batches, eval_hook, mixture=True),
    "conversations-padded": DataSource(_row_step_batches, eval_hook, mixture=True),
    "rollouts": DataSource(_rollouts, rl_eval_hook, samples_params=True),
}


def register_data_source(name: str, source: DataSource) -> DataSource:
    if name in DATA_SOURCES:
        raise ValueError(f"a data source named {name!r} is already registered")
    DATA_SOURCES[name] = source
    return source


def build_batches(run) -> Any:
    """The training batches of ``run``'s phase at its data state."""
    batches = DATA_SOURCES[run.phase.data].batches(run)
    if run.data_state is not None:
        batches.set_state(run.data_state)
    return batches


def mixture_epoch(config, phase, tokenizer) -> tuple[Any, Callable[[], int] | None]:
    """``(task mixture, steps in one epoch of it)`` of a phase that reads ``tasks.train``; else ``(None, None)``."""
    if not DATA_SOURCES[phase.data].mixture:
        return None, None
    source = conversation_source(config, "train")
    return source, lambda: epoch_steps(config, phase, tokenizer, source)
