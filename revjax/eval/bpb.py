"""Validation bits per byte for each reading direction a model knows, on the same documents and bytes.

Documents of the run's validation split are tokenized, oriented for the direction being measured (through
:func:`revjax.eval.choice.model_order`: a bidirectional model gets the direction token after BOS), packed
into rows of ``T+1`` tokens as the training pipeline packs its validation split (the run's ``data.val_packing``:
a stream cut anywhere, the same with each continued document's head repeated, or BOS-aligned best fit). The
direction token is never a target and special tokens have no bytes, so with stream or marked rows (which keep
every token) every direction is measured on the same bytes. Sums go through :func:`revjax.eval.steps.evaluate_loss`.
A model of a text reversal unit (``word``, ``entity``) reads a backward document's text reversed by pieces
(:func:`revjax.direction.orient_text`) and tokenized as it is; a reversal keeps every character, so it is measured on
the same bytes as a token-unit model of the same documents.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from revjax.config import MeshConfig
from revjax.data.batches import global_batch
from revjax.data.packing import PACKINGS, Packing, best_fit_rows
from revjax.direction import Direction, Specials, Unit, continued_row, inputs_and_targets, orient_text
from revjax.eval.choice import model_order
from revjax.eval.icl import EvalError
from revjax.eval.steps import build_eval_step, evaluate_loss
from revjax.sharding import batch_sharding, make_mesh


def document_rows(texts: Iterable[str], tokenizer: Any, direction: Direction | str, way: Direction | str,
                  rows: int, seq_len: int, *, packing: Packing = "stream",
                  packing_buffer: int = 1000,
                  unit: Unit | str = Unit.TOKEN) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(inputs (rows, T), targets (rows, T))`` batches of ``texts`` read ``way`` by a model of reversal ``unit``,
    rows packed as the training pipeline packs them with ``packing`` (:mod:`revjax.data.packing`); the last partial
    batch is dropped unless it is the only one (then it is padded with untargeted rows)."""
    if packing not in PACKINGS:
        raise ValueError(f"unknown packing {packing!r}; expected one of {', '.join(PACKINGS)}")
    specials = Specials.from_tokenizer(tokenizer)
    unit, docs, head = Unit.parse(unit), [], 1
    for text in texts:
        ids, head = _model_order(tokenizer, text, direction, way, specials, unit)
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


def _model_order(tokenizer: Any, text: str, direction: Direction | str, way: Direction | str, specials: Specials,
                 unit: Unit) -> tuple[np.ndarray, int]:
    """``(ids, first)`` of ``text`` read ``way`` (:func:`revjax.eval.choice.model_order`), by a model of ``unit``: a
    backward text unit reads the tokens of the reversed text."""
    body = tokenizer.encode(orient_text(text, way, unit))
    return model_order(body, direction, way, specials, unit)


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


def validation_documents(data_dir: str | os.PathLike[str], max_chars: int) -> list[str]:
    """The first documents of the validation split of ``data_dir``, about ``max_chars`` characters in all (the last
    one cut there): the one reader of validation text (training's suite hook, ``revjax eval``, ``revjax compare``)."""
    from revjax.data.shards import iter_texts

    texts, total = [], 0
    for batch in iter_texts(data_dir, "val"):
        for text in batch:
            texts.append(text[: max_chars - total])
            total += len(texts[-1])
            if total >= max_chars:
                return texts
    if not texts:
        raise EvalError(f"the validation split of {data_dir} holds no documents")
    return texts


def evaluate_bpb(graphdef: Any, params: Any, tokenizer: Any, direction: Direction | str, texts: Sequence[str], *,
                 ways: Sequence[Direction | str], seq_len: int, rows: int = 8, max_tokens: int = 1 << 20,
                 token_bytes_method: str = "decode", packing: Packing = "stream", packing_buffer: int = 1000,
                 mesh: Mesh | None = None, param_shardings: Any = None, eval_step: Callable | None = None,
                 unit: Unit | str = Unit.TOKEN) -> dict:
    """``{way: {"bpb", "loss", "batches", "positions"}}`` on ``texts`` (about ``max_tokens`` positions per way), rows
    packed with ``packing`` (a run's ``data.val_packing``), on ``mesh`` (default: one device; ``rows`` are this
    process's rows of each global batch), with ``eval_step`` when one is built for that mesh already; ``unit`` is
    the model's reversal unit (a run's ``direction.unit``)."""
    if mesh is None:
        mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    if eval_step is None:
        shardings = param_shardings or jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
        eval_step = build_eval_step(graphdef, mesh, shardings, tokenizer.token_bytes(token_bytes_method))
    row_sharding = batch_sharding(mesh)
    global_rows = rows * jax.process_count()
    out = {}
    for way in map(Direction.parse, ways):
        used = [0]

        def counted(batches):
            for batch in batches:
                used[0] += 1
                yield global_batch(batch, row_sharding)

        rows_iter = counted(document_rows(texts, tokenizer, direction, way, rows, seq_len, packing=packing,
                                          packing_buffer=packing_buffer, unit=unit))
        measured = evaluate_loss(eval_step, params, rows_iter, max(1, max_tokens // (global_rows * seq_len)))
        out[way.value] = {**measured, "batches": used[0], "positions": used[0] * global_rows * seq_len}
    return out
