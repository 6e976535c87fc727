"""A process's batches from the base pipeline: one :class:`~revjax.data.pipeline.TokenBatchDataset` per data
slice (:class:`SlicedBatches`), and the global ``jax.Array`` of every process's rows (:func:`global_batch`).

Multi-host
    Process ``p`` of ``P`` reads row groups ``p, p+P, …`` of every shard and yields its local batch;
    :func:`global_batch` assembles the global ``jax.Array`` (the concatenation of the local batches in
    process order) for a batch sharding.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from revjax.config import Config
from revjax.data.pipeline import Batch, TokenBatchDataset
from revjax.data.shards import Split
from revjax.tokenizer import Tokenizer


def build_pipeline(
    config: Config,
    tokenizer: Tokenizer,
    split: Split,
    *,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
    cycle: bool | None = None,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """Return the batch iterator of ``split`` described by ``config``, prefetching ``prefetch`` batches in a thread.

    The iterator's ``get_state`` reflects the batches it has yielded, not those prefetched.
    """
    dataset: grain.IterDataset = TokenBatchDataset(
        config.data_path(),
        split,
        tokenizer,
        batch_size=batch_size,
        seq_len=seq_len,
        direction=config.direction.direction,
        unit=config.direction.unit,
        layout=config.direction.layout,
        packing=config.data.packing if split == "train" else config.data.val_packing,
        packing_buffer=config.data.packing_buffer,
        seed=config.direction.seed,
        process_index=process_index,
        process_count=process_count,
        cycle=cycle,
        tokenizer_threads=config.data.tokenizer_threads,
        tokenizer_batch_size=config.data.tokenizer_batch_size,
    )
    if prefetch > 0:
        dataset = grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=prefetch)
    return iter(dataset)


def global_batch(local: Batch, sharding: jax.sharding.Sharding) -> tuple[jax.Array, jax.Array]:
    """Return the global ``(inputs, targets)`` arrays whose rows are every process's local batch, in process order."""
    inputs, targets = (jax.make_array_from_process_local_data(sharding, x) for x in local)
    return inputs, targets


class SlicedBatches:
    """A process's share of the global batch: the rows of its document slices, concatenated in slice order.

    With ``slices`` S fixed, the global batch is the same for every process count P that divides S: process p
    reads slices ``p·S/P … (p+1)·S/P − 1``, each slice a pipeline over row groups ``s, s+S, …``.
    """

    def __init__(self, config: Config, tokenizer: Tokenizer, split: Split, *, rows: int, seq_len: int,
                 process_index: int = 0, process_count: int = 1, cycle: bool | None = None) -> None:
        total = config.data.slices or process_count
        if total % process_count:
            raise ValueError(f"data.slices={total} must be a multiple of the {process_count} processes")
        per_process = total // process_count
        if rows % per_process:
            raise ValueError(f"{rows} rows per process cannot be split over {per_process} data slices; "
                             "change data.slices or the batch size")
        self.iterators = [
            build_pipeline(config, tokenizer, split, batch_size=rows // per_process, seq_len=seq_len,
                           process_index=s, process_count=total, cycle=cycle)
            for s in range(process_index * per_process, (process_index + 1) * per_process)
        ]

    def __iter__(self) -> "SlicedBatches":
        return self

    def __next__(self) -> Batch:
        parts = [next(it) for it in self.iterators]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def get_state(self) -> dict:
        return {"slices": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        if len(state.get("slices", [])) != len(self.iterators):
            raise ValueError(f"the saved data state has {len(state.get('slices', []))} slice(s) for this process but "
                             f"{len(self.iterators)} are configured; keep data.slices and the process count as saved")
        for it, st in zip(self.iterators, state["slices"]):
            it.set_state(st)

    def close(self) -> None:
        for it in self.iterators:
            it.close()
