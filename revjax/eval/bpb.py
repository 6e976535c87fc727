"""Validation bits per byte for each reading direction a model knows, on the same documents and bytes, plus
greedy samples in reading order.

Documents of the run's validation split are tokenized, oriented for the direction being measured (through
:func:`revjax.eval.choice.model_order`: a bidirectional model gets the direction token after BOS), packed
into rows of ``T+1`` tokens as the training pipeline packs its validation split (the run's ``data.val_packing``:
a stream cut anywhere, the same with each continued document's head repeated, or BOS-aligned best fit). The
direction token is never a target and special tokens have no bytes, so with stream or marked rows (which keep
every token) every direction is measured on the same bytes. Sums go through :func:`revjax.evaluate.evaluate_loss`.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig
from revjax.data.packing import PACKINGS, Packing, best_fit_rows
from revjax.direction import Direction, Specials, continued_row, inputs_and_targets, join_generation, orient_prompt
from revjax.engine import generate
from revjax.eval.choice import model_order
from revjax.evaluate import build_eval_step, evaluate_loss
from revjax.sharding import make_mesh

SAMPLE_PROMPTS = {
    Direction.FORWARD: ["The capital of France is", "And God said,", "To be, or not to be:"],
    Direction.BACKWARD: ["is the capital of France.", "and it was so.", "that is the question."],
}


def document_rows(texts: Iterable[str], tokenizer: Any, direction: Direction | str, way: Direction | str,
                  rows: int, seq_len: int, *, packing: Packing = "stream",
                  packing_buffer: int = 1000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(inputs (rows, T), targets (rows, T))`` batches of ``texts`` read ``way``, rows packed as the training
    pipeline packs them with ``packing`` (:mod:`revjax.data.packing`); the last partial batch is dropped unless it
    is the only one (then it is padded with untargeted rows)."""
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; expected one of {', '.join(PACKINGS)}")
    specials = Specials.from_tokenizer(tokenizer)
    docs, head = [], 1
    for text in texts:
        ids, head = model_order(tokenizer.encode(text), direction, way, specials)
        is_target = np.ones(len(ids), bool)
        is_target[1:head] = False  # the direction token is never a target
        docs.append((ids, is_target))
    if packing == "bos_aligned":
        row_iter = best_fit_rows(docs, seq_len + 1, packing_buffer)
    else:
        row_iter = _stream_rows(docs, seq_len, head if packing == "marked" else 0)
    batch, yielded = [], False
    for row in row_iter:
        batch.append(row)
        if len(batch) == rows:
            yield inputs_and_targets(np.stack([r[0] for r in batch]), np.stack([r[1] for r in batch]))
            batch, yielded = [], True
    if batch and not yielded:
        pad = (np.full(seq_len + 1, specials.bos, np.int32), np.zeros(seq_len + 1, bool))
        batch += [pad] * (rows - len(batch))
        yield inputs_and_targets(np.stack([r[0] for r in batch]), np.stack([r[1] for r in batch]))


def _stream_rows(docs: list[tuple[np.ndarray, np.ndarray]], seq_len: int,
                 head: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows of ``T+1`` tokens of the documents' stream, each starting with the last one's last token (a row's first
    token is never a target). With ``head`` (marked packing), a row that starts past a document's first ``head``
    tokens repeats them first; one that starts within them starts at the document's BOS. A short last row is
    padded with untargeted BOS when it holds a target."""
    if not docs:
        return
    ids = np.concatenate([d[0] for d in docs])
    is_target = np.concatenate([d[1] for d in docs])
    starts = np.repeat(np.cumsum([0] + [len(d[0]) for d in docs[:-1]]), [len(d[0]) for d in docs])
    at = 0
    while at + 1 < len(ids):
        offset = at - starts[at]
        if head and offset < head:
            at = starts[at]
        if head and offset >= head:
            row = continued_row(ids[starts[at]: starts[at] + head], ids[at: at + seq_len + 1 - head],
                                is_target[at: at + seq_len + 1 - head])
            at += seq_len - head
        else:
            row = ids[at: at + seq_len + 1], is_target[at: at + seq_len + 1]
            at += seq_len
        if len(row[0]) < seq_len + 1:
            if not row[1][1:].any():
                return
            pad = seq_len + 1 - len(row[0])
            row = (np.concatenate([row[0], np.full(pad, ids[0], np.int32)]), np.concatenate([row[1], np.zeros(pad, bool)]))
        yield row


def evaluate_bpb(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str, texts: Sequence[str], *,
                 ways: Sequence[Direction | str], seq_len: int, rows: int = 8, max_tokens: int = 1 << 20,
                 token_bytes_method: str = "decode", packing: Packing = "stream", packing_buffer: int = 1000) -> dict:
    """``{way: {"bpb", "loss", "batches", "positions"}}`` on ``texts`` (about ``max_tokens`` positions per way), rows
    packed with ``packing`` (a run's ``data.val_packing``)."""
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
    step = build_eval_step(graphdef, mesh, shardings, tokenizer.token_bytes(token_bytes_method))
    out = {}
    for way in ways:
        way = Direction.parse(way)
        used = [0]

        def counted(batches):
            for batch in batches:
                used[0] += 1
                yield batch

        rows_iter = counted(document_rows(texts, tokenizer, direction, way, rows, seq_len, packing=packing,
                                          packing_buffer=packing_buffer))
        measured = evaluate_loss(step, params, rows_iter, max(1, max_tokens // (rows * seq_len)))
        out[way.value] = {**measured, "batches": used[0], "positions": used[0] * rows * seq_len}
    return out


def greedy_samples(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str,
                   ways: Sequence[Direction | str], max_len: int, max_new_tokens: int = 32) -> dict[str, list[str]]:
    """Greedy continuations of fixed prompts for each way, in reading order (backward text grows to the left)."""
    specials = Specials.from_tokenizer(tokenizer)
    out = {}
    for way in ways:
        way = Direction.parse(way)
        prompts = [tokenizer.encode(t, prepend=tokenizer.bos_id) for t in SAMPLE_PROMPTS[way]]
        generate_way = way if Direction.parse(direction) is Direction.BIDIRECTIONAL else None
        oriented = [orient_prompt(p, direction, specials, generate=generate_way) for p in prompts]
        room = min(max_len, max(map(len, oriented)) + max_new_tokens)
        generated = generate(graphdef, params, oriented, max_new_tokens, stop_ids=[tokenizer.bos_id], max_len=room)
        out[way.value] = [tokenizer.decode(join_generation(p, g, way)[1:]) for p, g in zip(prompts, generated)]
    return out
