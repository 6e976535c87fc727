"""Each phase's batches: training batches as one resumable iterator of step batches placed on the mesh, and the
validation rows its evaluation reads.

Base reads the document corpus; mid and SFT read the conversation mixtures of ``tasks.train`` / ``tasks.val``
(:mod:`revjax.data.conversations`: mid packs whole conversations like documents, SFT pads one per row); RL samples
its rows (:mod:`revjax.train.rl`). A step batch is ``{"inputs", "targets"}`` (RL adds ``advantages``), global arrays of shape ``(accum, rows, T)``; ``get_state()`` / ``set_state()``
round-trip the position exactly (it is stored with every checkpoint).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from revjax.config import Config
from revjax.data.conversations import ConversationBatches
from revjax.data.batches import SlicedBatches, global_batch
from revjax.phases import Phase
from revjax.tasks import build_mixture
from revjax.tokenizer import Tokenizer
from revjax.train.errors import TrainingError

# the conversation data sources and how each lays its conversations out (revjax.data.conversations)
CONVERSATION_KINDS = {"conversations-packed": "mid", "conversations-padded": "sft"}


class StepBatches:
    """Stacks ``accum`` micro-batches of a row iterator into one step batch on ``sharding``."""

    def __init__(self, rows, accum: int, sharding: jax.sharding.Sharding):
        self.rows, self.accum, self.sharding = rows, accum, sharding

    def __next__(self) -> dict:
        micro = [next(self.rows) for _ in range(self.accum)]
        inputs, targets = global_batch((np.stack([m[0] for m in micro]), np.stack([m[1] for m in micro])),
                                       self.sharding)
        return {"inputs": inputs, "targets": targets}

    def get_state(self) -> dict:
        return self.rows.get_state()

    def set_state(self, state: dict) -> None:
        self.rows.set_state(state)

    def close(self) -> None:
        self.rows.close()


def conversation_source(config: Config, split: str):
    """The task mixture of ``tasks.train`` (``split="train"``) or ``tasks.val`` (``"val"``)."""
    spec = config.tasks.train if split == "train" else config.tasks.val
    return build_mixture(spec, seed=config.tasks.seed, cache_dir=config.tasks_path(), training=split == "train")


def row_batches(config: Config, phase: Phase, tokenizer: Tokenizer, split: str, rows: int, *, source=None):
    """This process's ``(inputs, targets)`` rows of ``split`` for ``phase``: the train split cycles, val ends."""
    T, proc, n_proc = config.model.sequence_len, jax.process_index(), jax.process_count()
    if phase.data == "documents":
        return SlicedBatches(config, tokenizer, split, rows=rows, seq_len=T, process_index=proc,
                             process_count=n_proc, cycle=split == "train")
    if phase.data in CONVERSATION_KINDS:
        return ConversationBatches(config, tokenizer, source or conversation_source(config, split),
                                   kind=CONVERSATION_KINDS[phase.data], rows=rows, seq_len=T, process_index=proc,
                                   process_count=n_proc, cycle=split == "train")
    raise TrainingError(f"the {phase.name} phase reads {phase.data}, which are not row batches")


def epoch_steps(config: Config, phase: Phase, tokenizer: Tokenizer, source) -> int:
    """Optimizer steps in one epoch of a conversation mixture: SFT examples, or mid tokens, per step."""
    per_step = config.training.total_batch_tokens // config.model.sequence_len  # rows per optimizer step
    if CONVERSATION_KINDS.get(phase.data) == "sft":  # one padded conversation per row
        return max(1, len(source) // per_step)
    tokens = sum(len(tokenizer.render_conversation(source[i])[0]) for i in range(len(source)))
    return max(1, math.ceil(tokens / config.training.total_batch_tokens))
